"""Consensus across engines: numerics classes from attested engine entries decide who verifies a
chat primary and with which bound; a node serving other weights under a model id is out-voted.

The executors here run the in-process torch runtime; what the router reads is what their bundles
attest (engine family, version, dtype, device, whether it scores), exactly as for real engine
nodes (tests/engines runs vLLM itself).
"""

from __future__ import annotations

import trio

from node.jobs.engines import bounds_for_verifiers, cannot_score, same_class_first
from node.jobs.network_view import ExecutorInfo
from node.runtime import ChatRuntime
from node.runtime.tiny_lm import write_random_lm
from protocol.jobs.consensus import CALIBRATED_TOKEN_BOUNDS
from protocol.jobs.reputation import Offence
from protocol.numerics import TORCH_FP32_CPU, VLLM_BF16_CPU, EngineIdentity, token_gap_bound
from tests.node.jobs.harness import MemoryNetwork, add_member, make_router, models, names_for

__all__ = ["models"]  # the shared session fixture

TORCH = EngineIdentity("torch", "2.13.0+cpu", "float32", "cpu")
VLLM = EngineIdentity("vllm", "0.32.0", "bfloat16", "cpu")
NO_SCORE = EngineIdentity("openai", "unknown", "float16", "cpu", score=False)
MESSAGES = [{"role": "user", "content": "Which engine computes this?"}]


def _infos(net: MemoryNetwork) -> dict[bytes, ExecutorInfo]:
    return {m.peer_id: ExecutorInfo(m.peer_id, m.keys.public, "simulated", "", tuple(m.executor.runtimes),
                                    m.bundle) for m in net.members.values()}


async def test_verifiers_of_the_primary_class_first_and_pair_bounds(models) -> None:
    _, chat, _ = models
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([chat]))
        served = {chat.model_id: chat}
        torch_nodes = [add_member(net, served, engines={chat.model_id: TORCH}) for _ in range(3)]
        vllm_nodes = [add_member(net, served, engines={chat.model_id: VLLM}) for _ in range(2)]
        mute = add_member(net, {chat.model_id: chat}, engines={chat.model_id: NO_SCORE})
        infos = _infos(net)
        assert cannot_score(infos, chat.model_id) == {mute.peer_id}
        prefer = same_class_first(infos, chat.model_id, vllm_nodes[0].peer_id)
        assert prefer(vllm_nodes[1].peer_id) and not prefer(torch_nodes[0].peer_id)
        bounds = bounds_for_verifiers(infos, chat.model_id, vllm_nodes[0].peer_id)
        fp32 = CALIBRATED_TOKEN_BOUNDS.max_logit_gap
        cross = token_gap_bound(VLLM_BF16_CPU, TORCH_FP32_CPU, fp32)
        assert bounds(torch_nodes[0].peer_id).max_logit_gap == cross
        same_vllm = token_gap_bound(VLLM_BF16_CPU, VLLM_BF16_CPU, fp32)
        assert bounds(vllm_nodes[1].peer_id).max_logit_gap == same_vllm
        torch_bounds = bounds_for_verifiers(infos, chat.model_id, torch_nodes[0].peer_id)
        assert torch_bounds(torch_nodes[1].peer_id) == CALIBRATED_TOKEN_BOUNDS

        router = make_router(net)
        await nursery.start(router.run)
        text = {m.peer_id: m.identity.peer_id_text for m in net.members.values()}
        vllm_texts = {text[m.peer_id] for m in vllm_nodes}
        seen_vllm_primary = False
        # At least 12 chats, then on until a vLLM primary was drawn (bounded): the primary is drawn
        # by rendezvous on a random job id, and 12 with no vLLM primary happened 1 time in 120.
        for attempt in range(64):
            if attempt >= 12 and seen_vllm_primary:
                break
            result = await router.chat(chat.model_id, MESSAGES, max_tokens=4, replicas=3)
            rows = result.report["executors"]
            primary = next(e["peer_id"] for e in rows if e["role"] == "primary")
            verifiers = {e["peer_id"] for e in rows if e["role"] == "verifier"}
            assert text[mute.peer_id] not in verifiers  # it cannot score: never a verifier
            if primary in vllm_texts:
                seen_vllm_primary = True
                assert vllm_texts - {primary} <= verifiers  # the other vLLM node verifies first
            elif primary != text[mute.peer_id]:
                assert not verifiers & vllm_texts  # enough torch verifiers: no cross-class pair
            assert all(e["in_majority"] for e in rows)
        assert seen_vllm_primary
        nursery.cancel_scope.cancel()


async def test_other_weights_under_the_model_id_are_outvoted_and_recorded(models, tmp_path) -> None:
    """An engine serving another checkpoint under the same model id (here: a random LM of the
    same shape with other weights) computes other tokens; the honest majority rejects them."""
    _, chat, _ = models
    other_dir = tmp_path / "other-weights"
    other_dir.mkdir()
    write_random_lm(other_dir, seed=99)
    impostor_runtime = ChatRuntime(other_dir, model_id=chat.model_id, name=chat.name)
    direct = chat.generate(MESSAGES, 8)  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(nursery, names=names_for([chat]))
        impostor = add_member(net, {chat.model_id: impostor_runtime}, engines={chat.model_id: TORCH})
        for _ in range(3):
            add_member(net, {chat.model_id: chat}, engines={chat.model_id: TORCH})
        router = make_router(net)
        await nursery.start(router.run)
        seen = False
        for _ in range(16):
            result = await router.chat(chat.model_id, MESSAGES, max_tokens=8, replicas=3)
            assert result.generation is not None and result.generation.tokens == direct.tokens
            rows = [e for e in result.report["executors"] if e["peer_id"] == impostor.identity.peer_id_text]
            if rows:  # as primary its tokens were rejected; as verifier it rejected honest ones
                seen = True
                assert not any(e["in_majority"] for e in rows)
                penalised = {p["peer_id"] for p in result.report.get("penalties", [])}
                offence_rows = [e for e in rows if e["offence"] == "wrong_output"]
                assert offence_rows or impostor.identity.peer_id_text in penalised
                break
        assert seen
        offences = router.reputation.evidence(impostor.peer_id)
        assert offences and offences[-1].offence is Offence.WRONG_OUTPUT
        nursery.cancel_scope.cancel()
