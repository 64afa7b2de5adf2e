"""Generated config.pbtxt, parsed with Triton's own ModelConfig schema (from tritonclient), not compared as text."""

from __future__ import annotations

from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as mc

from control_plane.reconciler import desired as D
from control_plane.reconciler.triton_config import TRITON_TYPE, render
from control_plane.reconciler.warmup import sample_shape

BERT = D.IoSignature(
    inputs=(D.Tensor("input_ids", "INT64", (-1, -1)), D.Tensor("pixel_values", "FP16", (-1, 3, 224, 224))),
    outputs=(D.Tensor("logits", "FP32", (-1, 1000)),),
    max_batch_size=16,
)


def parse(text: str) -> mc.ModelConfig:
    # Parse fails on any field, enum value or nesting the schema does not have.
    return text_format.Parse(text, mc.ModelConfig())


def dtype(name: str) -> int:
    return int(mc.DataType.Value(TRITON_TYPE[name]))


def assert_warmup_matches(config: mc.ModelConfig, signature: D.IoSignature) -> None:
    """One warm-up sample: every registered input, its datatype, its shape with -1 as 1, batch of 1."""
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1
    assert set(warmup.inputs) == {t.name for t in signature.inputs}
    batched = signature.max_batch_size > 0
    for tensor in signature.inputs:
        sample = warmup.inputs[tensor.name]
        assert sample.data_type == dtype(tensor.datatype)
        full = sample_shape(tensor.shape)
        expected = (full[1:] if batched else full) or [1]
        assert list(sample.dims) == expected
        assert all(d >= 1 for d in sample.dims)  # Triton refuses a dynamic warm-up dimension
        assert sample.zero_data


def test_batched_signature_with_dynamic_batching() -> None:
    config = parse(render("bert", BERT, D.Batching(100, (8, 16))))
    assert config.name == "bert" and config.platform == "tensorrt_plan" and config.max_batch_size == 16
    # Triton's dims leave the batch dimension out.
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input_ids", mc.TYPE_INT64, [-1]), ("pixel_values", mc.TYPE_FP16, [3, 224, 224])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", mc.TYPE_FP32, [1000])]
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and group.count == 1
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert_warmup_matches(config, BERT)
    assert list(config.model_warmup[0].inputs["input_ids"].dims) == [1]  # a dynamic length warms up as 1


def test_unbatched_signature_keeps_full_shapes_and_no_batcher() -> None:
    signature = D.IoSignature(inputs=(D.Tensor("x", "FP32", (1, -1, 16)),), outputs=(D.Tensor("y", "BYTES", (4,)),))
    config = parse(render("m", signature, D.Batching(50)))
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, -1, 16]
    assert config.output[0].data_type == mc.TYPE_STRING
    assert not config.HasField("dynamic_batching")  # nothing to batch
    assert_warmup_matches(config, signature)


def test_one_value_per_item_is_reshaped() -> None:
    signature = D.IoSignature(inputs=(D.Tensor("score", "FP32", (-1,)),), outputs=(D.Tensor("y", "FP32", (-1, 2)),),
                              max_batch_size=8)
    config = parse(render("m", signature))
    assert list(config.input[0].dims) == [1] and list(config.input[0].reshape.shape) == []
    assert_warmup_matches(config, signature)


def test_without_a_signature_triton_completes_it_and_nothing_warms() -> None:
    config = parse(render("resnet50", None))
    assert config.platform == "tensorrt_plan" and not config.input and not config.output
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert not config.model_warmup


def test_every_datatype_maps_to_a_triton_type() -> None:
    for name in TRITON_TYPE:
        signature = D.IoSignature(inputs=(D.Tensor("x", name, (2,)),), outputs=(D.Tensor("y", name, (2,)),))
        config = parse(render("m", signature))
        assert config.input[0].data_type == config.output[0].data_type == dtype(name) != mc.TYPE_INVALID


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,20}", fullmatch=True)
dims = st.lists(st.sampled_from([-1, 1, 2, 3, 7, 224]), min_size=0, max_size=5)


@st.composite
def signatures(draw: st.DrawFn) -> D.IoSignature:
    batch = draw(st.sampled_from([0, 1, 8, 64]))

    def tensors(prefix: str) -> tuple[D.Tensor, ...]:
        labels = draw(st.lists(names, min_size=1, max_size=4, unique=True))
        return tuple(D.Tensor(f"{prefix}{n}", draw(st.sampled_from(sorted(TRITON_TYPE))),
                              tuple(([-1] if batch else []) + draw(dims.filter(lambda d: batch or d))))
                     for n in labels)

    return D.IoSignature(inputs=tensors("in_"), outputs=tensors("out_"), max_batch_size=batch)


@settings(max_examples=60, deadline=None)
@given(signatures())
def test_any_valid_signature_parses_and_warms_up_with_its_inputs(signature: D.IoSignature) -> None:
    config = parse(render("model-x", signature, D.Batching(10, (1,)) if signature.max_batch_size else None))
    assert [i.name for i in config.input] == [t.name for t in signature.inputs]
    assert [o.name for o in config.output] == [t.name for t in signature.outputs]
    assert_warmup_matches(config, signature)
