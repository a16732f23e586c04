"""The token codec: shape, tag checks, key rotation, derivation for reuse."""

from __future__ import annotations

import pytest

from tokensvc.tokens import (
    ACCESS,
    CODE,
    REFRESH,
    TOKEN_LEN,
    TokenCodec,
    derived_grant_id,
    digest,
    new_grant_id,
    new_seed,
)

KEY_A = "a" * 40
KEY_B = "b" * 40


@pytest.mark.parametrize(("kind", "prefix"), [(ACCESS, "tsv_at_"), (REFRESH, "tsv_rt_"), (CODE, "tsv_ac_")])
def test_minted_token_has_prefix_length_and_parses(kind: str, prefix: str) -> None:
    codec = TokenCodec([KEY_A])
    grant = new_grant_id()
    minted = codec.mint(kind, grant)
    assert minted.token.startswith(prefix) and len(minted.token) == TOKEN_LEN
    parsed = codec.parse(minted.token)
    assert parsed is not None
    assert (parsed.kind, parsed.grant_id, parsed.digest) == (kind, grant, minted.digest)
    assert minted.digest == digest(minted.token) and minted.token not in minted.digest


def test_two_mints_differ() -> None:
    codec = TokenCodec([KEY_A])
    grant = new_grant_id()
    assert codec.mint(ACCESS, grant).token != codec.mint(ACCESS, grant).token


@pytest.mark.parametrize("position", [7, 20, 40, 69])
@pytest.mark.parametrize("replacement", ["A", "B", "C", "D", "_"])
def test_a_changed_character_is_refused(position: int, replacement: str) -> None:
    codec = TokenCodec([KEY_A])
    token = codec.mint(ACCESS, new_grant_id()).token
    if token[position] == replacement:
        replacement = "E"
    forged = token[:position] + replacement + token[position + 1:]
    assert codec.parse(forged) is None


@pytest.mark.parametrize("bad", ["", "tsv_at_", "tsv_xx_" + "A" * 63, "Bearer abc", "tsv_at_" + "!" * 63])
def test_malformed_tokens_are_refused(bad: str) -> None:
    assert TokenCodec([KEY_A]).parse(bad) is None


def test_kind_mismatch_is_refused() -> None:
    codec = TokenCodec([KEY_A])
    token = codec.mint(REFRESH, new_grant_id()).token
    assert codec.parse(token, ACCESS) is None
    assert codec.parse(token, REFRESH) is not None


def test_token_of_another_key_is_refused() -> None:
    token = TokenCodec([KEY_B]).mint(ACCESS, new_grant_id()).token
    assert TokenCodec([KEY_A]).parse(token) is None


def test_key_rotation_new_key_signs_old_key_still_verifies() -> None:
    old = TokenCodec([KEY_A]).mint(ACCESS, new_grant_id()).token
    rotated = TokenCodec([KEY_B, KEY_A])
    assert rotated.parse(old) is not None
    fresh = rotated.mint(ACCESS, new_grant_id()).token
    assert TokenCodec([KEY_B]).parse(fresh) is not None
    assert TokenCodec([KEY_A]).parse(fresh) is None


def test_derived_tokens_are_reproducible_from_the_seed_only_with_the_key() -> None:
    codec = TokenCodec([KEY_A])
    grant = derived_grant_id("reuse", "client", "", "read")
    seed = new_seed()
    first = codec.derive(ACCESS, grant, seed)
    again = codec.derive(ACCESS, grant, seed, codec.key_id)
    assert first is not None and again is not None and first.token == again.token
    assert codec.parse(first.token) is not None
    assert seed not in first.token
    other = TokenCodec([KEY_B]).derive(ACCESS, grant, seed)
    assert other is not None and other.token != first.token
    assert codec.derive(ACCESS, grant, seed, "00000000") is None


def test_derived_grant_ids_are_stable_and_distinct() -> None:
    assert derived_grant_id("reuse", "c", "u", "a b") == derived_grant_id("reuse", "c", "u", "a b")
    assert derived_grant_id("reuse", "c", "u", "a") != derived_grant_id("reuse", "c", "u", "a b")
    assert derived_grant_id("reuse", "c", "", "ua") != derived_grant_id("reuse", "c", "u", "a")
