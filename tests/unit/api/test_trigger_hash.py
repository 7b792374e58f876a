"""The trigger's request hash: written step by step (off the loop) or at once, the same."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from daemon.api.triggers import request_hash

BODIES: list[Any] = [
    {},
    {"context": {"b": 1, "a": [1, 2, {"z": None, "é": "ü"}]}, "recipients": []},
    {"recipients": [{"profile_id": "p1", "email": "a@b.c"}, {"profile_id": "p2"}],
     "audience": None, "context": {"promo": "X", "n": 1.5}},
    {"audience": "newsletter"},
    [1, 2, 3],
]


@pytest.mark.parametrize("body", BODIES)
def test_the_stepwise_hash_is_the_hash_of_the_canonical_json(body: Any) -> None:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert request_hash(body) == expected
    assert request_hash(body, stepwise=True) == expected
