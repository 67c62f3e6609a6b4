"""What the router reads from executors' attested engine entries: classes, scoring, pair bounds.

An executor's bundle binds, per served model, the engine computing it (protocol.numerics). From
that the chat flow decides three things for the score phase: who may verify at all (an engine
that cannot score never is), who is preferred (verifiers of the primary's numerics class first,
so the tightest bound applies whenever the network allows), and which logit-gap bound judges a
verifier's scores (the calibrated bound of the primary's and the verifier's profiles).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from node.jobs.network_view import ExecutorInfo
from protocol.attestation.bundle import AttestationBundle, BundleError
from protocol.jobs.consensus import CALIBRATED_TOKEN_BOUNDS, TokenBounds
from protocol.numerics import EngineIdentity, NumericsClass, token_gap_bound

__all__ = ["bounds_for_verifiers", "cannot_score", "engine_of", "numerics_class", "same_class_first"]


@functools.lru_cache(maxsize=512)
def _engines_of(bundle: bytes) -> dict[str, EngineIdentity]:
    try:
        decoded = AttestationBundle.from_wire(bundle)
    except BundleError:
        return {}
    return {entry.model: entry.engine for entry in decoded.engines}


def engine_of(info: ExecutorInfo, model_id: str) -> EngineIdentity | None:
    """The engine ``info``'s bundle attests for ``model_id`` (None: the bundle does not say)."""
    return _engines_of(info.bundle).get(model_id) if info.bundle else None


def numerics_class(info: ExecutorInfo, model_id: str) -> NumericsClass | None:
    engine = engine_of(info, model_id)
    return None if engine is None else NumericsClass.of(model_id, engine)


def cannot_score(infos: Mapping[bytes, ExecutorInfo], model_id: str) -> frozenset[bytes]:
    """Executors whose attested engine for ``model_id`` cannot score claimed tokens."""
    return frozenset(
        peer for peer, info in infos.items()
        if (engine := engine_of(info, model_id)) is not None and not engine.score
    )


def same_class_first(
    infos: Mapping[bytes, ExecutorInfo], model_id: str, primary: bytes
) -> Callable[[bytes], bool]:
    """Preference for the score phase: True for executors of the primary's numerics class."""
    info = infos.get(primary)
    wanted = numerics_class(info, model_id) if info is not None else None

    def prefer(peer: bytes) -> bool:
        other = infos.get(peer)
        return other is not None and numerics_class(other, model_id) == wanted

    return prefer


def bounds_for_verifiers(
    infos: Mapping[bytes, ExecutorInfo], model_id: str, primary: bytes,
    same_class: TokenBounds = CALIBRATED_TOKEN_BOUNDS,
) -> Callable[[bytes], TokenBounds]:
    """The bound judging each verifier's scores of ``primary``'s tokens (protocol.numerics)."""
    primary_info = infos.get(primary)
    primary_class = numerics_class(primary_info, model_id) if primary_info is not None else None

    def bounds(verifier: bytes) -> TokenBounds:
        info = infos.get(verifier)
        verifier_class = numerics_class(info, model_id) if info is not None else None
        gap = token_gap_bound(
            primary_class.profile if primary_class else None,
            verifier_class.profile if verifier_class else None,
            same_class.max_logit_gap,
        )
        return TokenBounds(max_logit_gap=gap)

    return bounds

