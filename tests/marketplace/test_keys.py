"""API key tokens: format, entropy and the constant-time check."""

from hypothesis import given
from hypothesis import strategies as st

from marketplace import keys


def test_generated_token_has_prefix_public_id_and_256_bit_secret():
    public_id, token = keys.token_generate()
    assert token.startswith(f"cango_sk_{public_id}_")
    parsed = keys.token_parse(token)
    assert parsed is not None
    assert parsed.public_id == public_id
    assert len(token) - len(f"cango_sk_{public_id}_") == 43  # 32 bytes, base64url


def test_tokens_are_unique():
    tokens = {keys.token_generate()[1] for _ in range(1000)}
    assert len(tokens) == 1000


def test_hash_matches_only_the_same_token():
    _, token = keys.token_generate()
    stored = keys.token_hash(token)
    assert keys.token_matches(token, stored)
    assert not keys.token_matches(token[:-1] + ("A" if token[-1] != "A" else "B"), stored)


@given(st.text(max_size=200))
def test_parse_rejects_anything_not_shaped_like_a_key(raw):
    parsed = keys.token_parse(raw)
    if parsed is not None:
        assert raw.startswith("cango_sk_")
        assert len(raw) == len("cango_sk_") + 12 + 1 + 43


def test_parse_rejects_near_misses():
    _, token = keys.token_generate()
    for bad in (token + "x", token[:-1], token.upper(), " " + token, token.replace("_sk_", "_pk_")):
        assert keys.token_parse(bad) is None
