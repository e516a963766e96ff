from rest_framework import serializers


class TenantSerializer(serializers.Serializer[object]):
    id = serializers.IntegerField()
    slug = serializers.CharField()
    name = serializers.CharField()
    status = serializers.CharField()


class KeySerializer(serializers.Serializer[object]):
    id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    prefix = serializers.CharField(source="display_prefix")
    expires_at = serializers.DateTimeField(allow_null=True)
    allowed_models = serializers.ListField(child=serializers.CharField())
    monthly_spend_cap_micros = serializers.IntegerField(allow_null=True)


class MeSerializer(serializers.Serializer[object]):
    tenant = TenantSerializer()
    key = KeySerializer()
    scopes = serializers.ListField(child=serializers.CharField())


class HealthSerializer(serializers.Serializer[object]):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    checks = serializers.DictField(child=serializers.CharField())
