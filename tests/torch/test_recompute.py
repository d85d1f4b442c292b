"""Activation checkpointing: every way torch users recompute a forward, against the same model without it.

A recomputed training forward must reproduce the first run (same alpha, same activations,
so the same gradients) and advance the state once (spec section 6a). Each test trains a
few steps with and without the recomputation from the same weights and compares every
gradient and every state buffer. Eager recomputation is bitwise equal; compiled runs are
compared within float32 rounding, against the same model compiled without checkpointing.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from aion_pytorch import AionBlock, AionResidual, AionScale

DIM = 16


def blocks(n: int = 2, k_update: int = 1) -> torch.nn.ModuleList:
    torch.manual_seed(0)
    return torch.nn.ModuleList(
        AionBlock(torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.Tanh()), dim=DIM, k_update=k_update)
        for _ in range(n))


def train(model: torch.nn.Module, forward, steps: int = 3):
    """Gradients of every step (parameters, then the input) and the final buffers."""
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for _ in range(steps):
        x = torch.randn(4, 8, DIM, requires_grad=True)
        opt.zero_grad(set_to_none=True)
        (forward(model, x) ** 2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()] + [x.grad])
        opt.step()
    return grads, {k: v.clone() for k, v in model.named_buffers()}


def assert_same_training(got, want, exact: bool = True):
    (g_got, s_got), (g_want, s_want) = got, want
    for step_got, step_want in zip(g_got, g_want, strict=True):
        for a, b in zip(step_got, step_want, strict=True):
            if exact:
                assert torch.equal(a, b), float((a - b).abs().max())
            else:  # float32 rounding of compiled against compiled
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert s_got.keys() == s_want.keys()
    for name in s_want:
        assert torch.equal(s_got[name], s_want[name]), (name, s_got[name], s_want[name])


def plain(model, x):
    for block in model:
        x = block(x)
    return x


def each_checkpointed(use_reentrant: bool):
    def forward(model, x):
        for block in model:
            x = checkpoint(block, x, use_reentrant=use_reentrant)
        return x
    return forward


def sequential(use_reentrant: bool):
    def forward(model, x):
        return checkpoint_sequential(torch.nn.Sequential(*model), 2, x, use_reentrant=use_reentrant)
    return forward


def whole_stack(use_reentrant: bool):
    return lambda model, x: checkpoint(plain, model, x, use_reentrant=use_reentrant)


def nested(use_reentrant: bool):
    """Checkpointed blocks inside a checkpointed stack (as Keras' full remat nests them):
    each block's forward is recomputed twice in the backward."""
    return lambda model, x: checkpoint(each_checkpointed(use_reentrant), model, x, use_reentrant=use_reentrant)


def wrapped(use_reentrant: bool):
    """torch's checkpoint_wrapper, as FSDP recipes apply it to each block."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    impl = CheckpointImpl.REENTRANT if use_reentrant else CheckpointImpl.NO_REENTRANT

    def forward(model, x):
        for block in model:
            x = checkpoint_wrapper(block, checkpoint_impl=impl)(x)
        return x
    return forward


WAYS = {f"{name}-{'reentrant' if r else 'non-reentrant'}": make(r)
        for name, make in [("checkpoint", each_checkpointed), ("checkpoint_sequential", sequential),
                           ("whole-stack", whole_stack), ("nested", nested), ("checkpoint_wrapper", wrapped)]
        for r in (False, True)}


@pytest.mark.parametrize("k_update", [1, 2])
@pytest.mark.parametrize("way", WAYS)
def test_eager_checkpointing_equals_the_plain_run(way, k_update):
    model = blocks(4, k_update)
    want = train(copy.deepcopy(model), plain)
    got = train(model, WAYS[way])
    assert_same_training(got, want)
    assert all(len(b.aion._replays) <= 1 for b in model)  # the last step's forward at most


def test_plain_training_keeps_no_records():
    model = blocks(2)
    train(model, plain)
    assert all(len(b.aion._replays) == 0 for b in model)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_a_layer_used_several_times_replays_each_use(use_reentrant):
    """One layer applied three times: inside one checkpointed region (recomputed in forward
    order) and as three regions (recomputed in reverse order), and two micro-batches
    whose summed loss is backpropagated once."""
    torch.manual_seed(0)
    shared = AionBlock(torch.nn.Linear(DIM, DIM), dim=DIM)

    def thrice(model, x):
        for _ in range(3):
            x = model(x)
        return x

    def one_region(model, x):
        return checkpoint(thrice, model, x, use_reentrant=use_reentrant)

    def three_regions(model, x):
        for _ in range(3):
            x = checkpoint(model, x, use_reentrant=use_reentrant)
        return x

    want = train(copy.deepcopy(shared), thrice)
    assert int(want[1]["aion.step_count"]) == 9
    assert_same_training(train(copy.deepcopy(shared), one_region), want)
    assert_same_training(train(copy.deepcopy(shared), three_regions), want)

    def micro_batches(model, x):  # two halves, one backward for both
        return torch.cat([checkpoint(model, half, use_reentrant=use_reentrant) for half in x.chunk(2)])

    assert_same_training(train(copy.deepcopy(shared), micro_batches),
                         train(copy.deepcopy(shared), lambda m, x: torch.cat([m(h) for h in x.chunk(2)])))


def test_a_training_forward_under_no_grad_does_not_disturb_a_later_recomputation():
    model = blocks(2)
    twin = copy.deepcopy(model)
    x = torch.randn(4, 8, DIM)
    with torch.no_grad():  # e.g. re-estimating statistics in train mode: leaves a record nobody replays
        plain(model, x)
        plain(twin, x)
    assert all(len(b.aion._replays) == 1 for b in model)
    assert_same_training(train(model, each_checkpointed(True)), train(twin, plain))


def test_scale_only_form_under_checkpointing():
    torch.manual_seed(0)
    norm, branch, scale = torch.nn.LayerNorm(DIM), torch.nn.Linear(DIM, DIM), AionScale()
    model = torch.nn.ModuleList([norm, branch, scale])

    def block(model, x):
        norm, branch, scale = model
        h = norm(x)
        return x + scale(branch(h), h)

    want = train(copy.deepcopy(model), block)
    got = train(copy.deepcopy(model), lambda m, x: checkpoint(block, m, x, use_reentrant=False))
    assert_same_training(got, want)


def test_residual_with_x_as_the_ratio_input_under_checkpointing():
    torch.manual_seed(0)
    model = torch.nn.ModuleList([torch.nn.Linear(DIM, DIM), AionResidual(k_update=3)])

    def forward(model, x):
        return model[1](x, model[0](x))

    want = train(copy.deepcopy(model), forward, steps=4)
    assert_same_training(train(copy.deepcopy(model), lambda m, x: checkpoint(forward, m, x, use_reentrant=True),
                               steps=4), want)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("k_update", [1, 2])
def test_compiled_with_checkpointing_inside_equals_compiled_without(k_update, fresh_dynamo):
    """torch.utils.checkpoint inside torch.compile (fullgraph): Inductor recomputes the
    region in the compiled backward; the state read is replayed there."""
    model = blocks(2, k_update)
    want = train(copy.deepcopy(model), torch.compile(plain, fullgraph=True))
    got = train(copy.deepcopy(model), torch.compile(each_checkpointed(False), fullgraph=True))
    assert_same_training(got, want, exact=False)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_a_compiled_block_equals_the_compiled_block(use_reentrant, fresh_dynamo):
    model = blocks(2, k_update=2)
    compiled = {id(b): torch.compile(b, fullgraph=True) for b in model}
    want = train(copy.deepcopy(model), torch.compile(plain, fullgraph=True))

    def forward(model, x):
        for block in model:
            x = checkpoint(compiled[id(block)], x, use_reentrant=use_reentrant)
        return x

    assert_same_training(train(model, forward), want, exact=False)


def _hugging_face_model(family: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(config), ("attn", "mlp")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(config), ("self_attn", "mlp")


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hugging_face_gradient_checkpointing_equals_the_plain_model(family):
    """AION on both residuals of every block (AionScaledBranch; Llama passes the branch input
    by keyword), trained with and without ``gradient_checkpointing_enable()`` (Hugging Face's
    default: reentrant) from the same weights."""
    from aion_pytorch import scale_branches

    model, branches = _hugging_face_model(family)
    assert len(scale_branches(model, branches)) == 4

    def run(model, **checkpointing):
        if checkpointing:
            model.gradient_checkpointing_enable(**checkpointing)
        model.train()
        torch.manual_seed(1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        grads = []
        for _ in range(3):
            ids = torch.randint(0, 64, (2, 16))
            opt.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
        return grads, {k: v.clone() for k, v in model.named_buffers() if ".aion." in k}

    want = run(copy.deepcopy(model))
    assert [int(v) for k, v in want[1].items() if k.endswith("step_count")] == [3] * 4
    assert_same_training(run(copy.deepcopy(model), gradient_checkpointing_kwargs=None), want)
    assert_same_training(run(copy.deepcopy(model), gradient_checkpointing_kwargs={"use_reentrant": False}), want)


def test_a_second_backward_through_a_retained_graph_replays_again():
    """Non-reentrant checkpointing recomputes once per backward pass: twice here."""
    model = blocks(2)
    twin = copy.deepcopy(model)
    x = torch.randn(4, 8, DIM)
    loss = (each_checkpointed(False)(model, x) ** 2).mean()
    want = (plain(twin, x) ** 2).mean()
    for _ in range(2):
        loss.backward(retain_graph=True)
        want.backward(retain_graph=True)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    for a, b in zip(model.buffers(), twin.buffers(), strict=True):
        assert torch.equal(a, b)
