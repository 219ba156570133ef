"""AppTest: every page renders on the shipped checkpoints without exception; the slider shows met_core's numbers."""

import pytest
from streamlit.testing.v1 import AppTest

from met_core.traces import load_trace
from met_core.whatif import TraceArrays, whatif

from .conftest import HYMENOPTERA, ROOT

CKPT = ROOT / "checkpoints"
pytestmark = pytest.mark.skipif(not (CKPT / "cifar10-met" / "test_trace.npz").is_file(),
                                reason="shipped checkpoints missing: run bench/rebuild_checkpoints.py")


def app(page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    for k, v in state.items():
        at.session_state[k] = v
    if page:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_whatif_slider_shows_met_core_numbers():
    at = app()
    arrays = TraceArrays.from_trace(load_trace(CKPT / "cifar10-met" / "test_trace.npz"))
    for t in (0.5, 0.95):
        at.slider(key="gmax-softmax").set_value(t).run()
        assert not at.exception
        r = whatif(arrays, t)
        assert metric(at, "Accuracy") == f"{100 * r['accuracy']:.2f}%"
        assert metric(at, "Mean GMACs") == f"{r['gmacs']:.4f}"
    assert any("simulated from cached exit outputs" in c.value for c in at.caption)


def test_whatif_presets_and_policies():
    at = app()
    at.button(key="preset0.5").click().run()
    assert not at.exception and at.radio(key="mode").value == "Per-exit thresholds"
    gm = float(metric(at, "Mean GMACs"))
    arrays = TraceArrays.from_trace(load_trace(CKPT / "cifar10-met" / "test_trace.npz"))
    assert gm < arrays.gmacs[-1]
    at.radio(key="mode").set_value("One global threshold").run()
    at.radio(key="policy").set_value("entropy").run()
    assert not at.exception
    at.radio(key="policy").set_value("patience").run()
    assert not at.exception


@pytest.mark.parametrize("page", ["views/how_met_works.py", "views/models.py", "views/samples.py"])
def test_pages_render(page):
    app(page)


def test_representations_page_shows_both_panels_with_numbers():
    at = app("views/representations.py")
    assert any("kNN accuracy" in m.value for m in at.markdown)


def test_switching_models_changes_every_page():
    at = app("views/models.py")
    hym = next(o for o in at.radio(key="model_choice").options if "hymenoptera" in str(o))
    at.radio(key="model_choice").set_value(hym).run()
    assert not at.exception and "hymenoptera" in at.session_state["checkpoint"]
    at.switch_page("views/whatif.py").run()
    assert not at.exception and any("hymenoptera-met" in c.value for c in at.caption)


def test_upload_of_a_real_photo_yields_a_prediction():
    photo = next((HYMENOPTERA / "val" / "bees").glob("*.jpg"))
    at = app("views/samples.py", checkpoint=str(CKPT / "hymenoptera-met"))
    at.file_uploader(key="uploads").set_value([(photo.name, photo.read_bytes(), "image/jpeg"),
                                               ("broken.jpg", b"not an image", "image/jpeg")]).run()
    assert not at.exception
    assert len(at.dataframe) == 1  # the upload table (AppTest does not expose dataframe keys)
    table = at.dataframe[0].value
    assert list(table["file"]) == [photo.name] and table["class"][0] in ("ants", "bees")
    assert any("broken.jpg is not a readable image" in e.value and "BytesIO" not in e.value for e in at.error)


def test_missing_checkpoint_folder_is_one_sentence():
    at = app("views/models.py")
    at.text_input(key="new_ckpt").set_value("/no/such/folder").run()
    at.button(key="add_ckpt").click().run()
    assert not at.exception and any("does not exist" in e.value for e in at.error)


def test_clicking_a_sample_shows_its_confidence_ladder():
    at = app("views/samples.py")
    first = next(b for b in at.button if b.key and b.key.startswith("s"))
    first.click().run()
    assert not at.exception
    assert at.session_state["sample"] == int(first.key[1:])
    assert any("true class" in h.value for h in at.subheader)


def test_measure_button_runs_the_real_early_exit():
    at = app()
    at.button(key="measure").click().run(timeout=300)
    assert not at.exception
    assert any("Real early exit: measured speed-up" in s.value for s in at.success), [e.value for e in at.error]
