"""AppTest: every page renders on the shipped checkpoints without exception; the slider shows met_core's numbers."""

import html

import pytest
from streamlit.testing.v1 import AppTest

from met_core.analysis.whatif import TraceArrays, whatif
from met_core.io.traces import load_trace

from .conftest import DEFAULT_MODEL, HYMENOPTERA, ROOT

CKPT = ROOT / "checkpoints"
pytestmark = pytest.mark.skipif(
    not (CKPT / "cifar10-met" / "test_trace.npz").is_file(),
    reason="shipped checkpoints missing: run bench/rebuild_checkpoints.py",
)


def app(page: str | None = "views/whatif.py", **query: str) -> AppTest:
    """The app opened with a link's query parameters, then switched to `page` and run again (a switch before the
    first run is ignored: the app would stay on its default page)."""
    at = AppTest.from_file(str(ROOT / "met_core" / "app" / "main.py"), default_timeout=240)
    at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def view(at: AppTest):
    """The session's typed view (met_core/app/view.py)."""
    return at.session_state["met_session"].view


def shown(text: str) -> str:
    """What a person reads: the app encodes untrusted text for Markdown (met_core/app/safe.py), the page decodes it."""
    return html.unescape(text).replace("\u200b", "")


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_whatif_slider_shows_met_core_numbers():
    at = app()
    arrays = TraceArrays.from_trace(load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz"))
    for t in (0.5, 0.95):
        at.slider(key="w:threshold").set_value(t).run()
        assert not at.exception
        r = whatif(arrays, t)
        assert metric(at, "Accuracy") == f"{100 * r.accuracy:.2f}%"
        assert metric(at, "Mean GMACs") == f"{r.gmacs:.4f}"
    assert any("simulated from cached exit outputs" in c.value for c in at.caption)


def test_switching_from_one_global_threshold_to_per_exit_keeps_the_numbers():
    """Per exit started at the default 0.8s: 83.96 % at a typed 0.734567 became 85.62 % on the click."""
    at = app()
    arrays = TraceArrays.from_trace(load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz"))
    at.slider(key="w:threshold").set_value(0.73).run()
    at.radio(key="w:mode").set_value("per-exit").run()
    assert not at.exception and view(at).per_exit == (0.73,) * (arrays.num_exits - 1)
    assert metric(at, "Accuracy") == f"{100 * whatif(arrays, 0.73).accuracy:.2f}%"
    own = (0.61, 0.7234, 0.9)[: arrays.num_exits - 1]  # per-exit values set one by one are kept across a switch
    at.session_state["met_session"].view.per_exit = own
    at.radio(key="w:mode").set_value("global").run()
    at.radio(key="w:mode").set_value("per-exit").run()
    assert view(at).per_exit == own


def test_whatif_presets_and_policies():
    at = app()
    at.button(key="preset0.5").click().run()
    assert not at.exception and at.radio(key="w:mode").value == "per-exit"
    gm = float(metric(at, "Mean GMACs"))
    arrays = TraceArrays.from_trace(load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz"))
    assert gm < arrays.gmacs[-1]
    at.radio(key="w:mode").set_value("global").run()
    at.radio(key="w:policy").set_value("entropy").run()
    assert not at.exception
    at.radio(key="w:policy").set_value("patience").run()
    assert not at.exception


@pytest.mark.parametrize(
    "page,title,own",
    [
        ("views/start.py", "MET Explorer", "Try this"),
        ("views/how_met_works.py", "How MET works", "Model card"),
        ("views/models.py", "Models", "Add a checkpoint folder"),
        ("views/samples.py", "Explore samples", None),
        ("views/whatif.py", "Threshold what-if", None),
    ],
)
def test_each_page_renders_its_own_content(page, title, own):
    at = app(page)
    assert [t.value for t in at.title] == [title]  # this page, not the default one
    if own:
        assert own in [h.value for h in at.subheader]
    if page.endswith("how_met_works.py"):
        card = at.dataframe[0].value
        assert DEFAULT_MODEL in card["value"].tolist() and "GMACs per exit" in card["field"].tolist()
    if page.endswith("samples.py"):
        assert any("images match" in m.value for m in at.markdown)


def test_representations_page_shows_both_panels_with_numbers():
    at = app("views/representations.py")
    assert [t.value for t in at.title] == ["Representations"]
    assert any("kNN accuracy" in m.value for m in at.markdown)


def test_representations_credit_the_regulariser_only_when_the_lambdas_differ():
    """Two models of lambda 0.1 were said to differ by what graph regularization does."""
    captions = {}
    for other in ("cifar10-met-nogr", "cifar10-full-met"):
        at = app("views/representations.py", model="cifar10-met", rcompare=other)
        captions[other] = next(shown(c.value) for c in at.caption if "At exit" in c.value)
    assert captions["cifar10-full-met"].startswith("Both models have the same graph-regularization weight (lambda 0.1)")
    assert captions["cifar10-met-nogr"].startswith("Graph regularization (the 'label' graph) pulls same-class")
    assert "has the larger lambda" in captions["cifar10-met-nogr"]


def test_selecting_a_models_row_changes_every_page():
    at = app("views/models.py")
    table = at.dataframe[0].value
    row = next(i for i, name in enumerate(table["checkpoint"]) if name == "hymenoptera-met")
    # a click on it (the table's key names the model in use)
    at.session_state[f"model_table-{DEFAULT_MODEL}"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    at.run()
    assert not at.exception and view(at).model == "hymenoptera-met" and at.query_params["model"] == "hymenoptera-met"
    at.switch_page("views/whatif.py").run()
    assert not at.exception and any("hymenoptera-met" in shown(c.value) for c in at.caption)


def test_upload_of_a_real_photo_yields_a_prediction():
    photo = next((HYMENOPTERA / "val" / "bees").glob("*.jpg"))
    at = app("views/samples.py", model="hymenoptera-met")
    at.file_uploader(key="uploads").set_value(
        [(photo.name, photo.read_bytes(), "image/jpeg"), ("broken.jpg", b"not an image", "image/jpeg")]
    ).run()
    assert not at.exception
    table = at.table[0].value
    assert [shown(i) for i in table.index] == [photo.name] and table["class"].iloc[0] in ("ants", "bees")
    assert any("broken.jpg is not a readable image" in shown(e.value) and "BytesIO" not in e.value for e in at.error)


def test_missing_checkpoint_folder_is_one_sentence():
    at = app("views/models.py")
    at.text_input(key="w:local.new_checkpoint").set_value("/no/such/folder").run()
    at.button(key="add_ckpt").click().run()
    assert not at.exception and any("does not exist" in shown(e.value) for e in at.error)


def test_clicking_a_sample_shows_its_confidence_ladder():
    at = app("views/samples.py")
    first = next(b for b in at.button if b.key and b.key.startswith("s"))
    first.click().run()
    assert not at.exception
    trace = load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz")
    sid = str(trace.ids[int(first.key[1:])])
    assert view(at).samples.sample == sid and at.query_params["sample"] == sid
    assert any(shown(m.value).startswith(f"{sid}: true class") for m in at.markdown)


def test_measure_button_runs_the_real_early_exit_in_the_background_and_explains_the_gap():
    from met_core.app import jobs

    at = app()
    at.button(key="measure").click().run(timeout=300)
    assert not at.exception
    job = jobs.registry()[at.session_state["met_session.local"].measure_job]
    assert job.running or job.result is not None  # the page returned while the job runs
    job.thread.join(900)  # a bound on a hang, not a speed goal
    assert job.error is None and job.result.images == jobs.MEASURE_IMAGES
    assert job.done == job.total == (2 + 2 * jobs.MEASURE_REPEATS) * jobs.MEASURE_IMAGES  # progress counts images
    at.run()
    assert not at.exception
    measured = [shown(s.value) for s in at.success]
    assert any(m.startswith(f"Measured for {DEFAULT_MODEL} (") for m in measured), [e.value for e in at.error]
    assert any("Why measured and predicted differ" in m.value for m in at.markdown)
    at.switch_page("views/models.py").run()
    at.session_state[f"model_table-{DEFAULT_MODEL}"] = {
        "selection": {
            "rows": [list(at.dataframe[0].value["checkpoint"]).index("hymenoptera-met")],
            "columns": [],
            "cells": [],
        }
    }
    at.run()
    at.switch_page("views/whatif.py").run()
    assert not any("Measured for" in shown(s.value) for s in at.success)  # that measurement was another model's


def test_a_trace_job_answers_a_class_mismatch_before_loading_any_model_and_cancel_writes_nothing(tmp_path, monkeypatch):
    from met_core.app import jobs
    from met_core.io.paths import runs_dir

    from .conftest import CIFAR_TEST

    monkeypatch.setenv("MET_RUNS_DIR", str(tmp_path / "runs"))
    odd = tmp_path / "three classes"
    for c in ("airplane", "bird", "cat"):
        (odd / c).mkdir(parents=True)
        (odd / c / "0000.jpg").symlink_to(CIFAR_TEST / c / "0000.jpg")
    job = jobs.registry()[jobs.trace(str(CKPT / "cifar10-met"), str(odd), "test", 0)]
    job.thread.join(600)
    assert job.error.startswith("the dataset has 3 classes and the checkpoint 10")
    assert not any("loading" in s or "converting" in s for s in job.stages), job.stages  # no model was loaded
    job = jobs.TraceJob(checkpoint=str(CKPT / "cifar10-met"), dataset=str(CIFAR_TEST), limit=300)
    job.cancel.set()  # cancelled as soon as the first batch reports
    job.run()
    assert job.error == "cancelled; nothing was written." and "running every exit over the images" in job.stages
    assert not runs_dir().exists() or not any(runs_dir().iterdir())


def test_a_trace_started_before_a_reload_is_found_with_its_progress_and_cancel(tmp_path, monkeypatch):
    """A reload (a new session) or another tab showed nothing of a running half-hour trace: no progress, no Cancel."""
    from met_core.app import jobs

    from .conftest import CIFAR_TEST

    monkeypatch.setenv("MET_RUNS_DIR", str(tmp_path / "runs"))
    job = jobs.registry()[jobs.trace(str(CKPT / "cifar10-met"), str(CIFAR_TEST), "test", 2000)]
    try:
        at = app("views/models.py")  # a session that never started it
        assert f"Tracing cifar10-met over {CIFAR_TEST} (test split, at most 2,000 images)." in [
            shown(c.value) for c in at.caption
        ]
        at.button(key="cancel_trace").click().run()
    finally:
        job.cancel.set()  # the test stops it in any case
        job.thread.join(600)
    assert job.error == "cancelled; nothing was written." and not (tmp_path / "runs").exists()


def test_hostile_uploads_each_get_their_own_message_and_state_is_kept(hostile_images):
    folder, expected = hostile_images
    at = app(model="hymenoptera-met")
    at.slider(key="w:threshold").set_value(0.9).run()
    at.switch_page("views/samples.py").run()
    at.file_uploader(key="uploads").set_value(
        [(n, (folder / n).read_bytes(), "image/png") for n in sorted(expected)]
    ).run()
    assert not at.exception
    assert sorted(shown(i) for i in at.table[0].value.index) == sorted(n for n, good in expected.items() if good)
    errors = [shown(e.value) for e in at.error]
    for bad in (n for n, good in expected.items() if not good):
        assert sum(e.startswith(bad + " ") for e in errors) == 1, (bad, errors)
    assert all("\n" not in e and "Traceback" not in e for e in errors)
    assert (view(at).mode, view(at).threshold, view(at).model) == ("global", 0.9, "hymenoptera-met")
    at.switch_page("views/whatif.py").run()
    assert not at.exception and at.slider(key="w:threshold").value == 0.9


def test_dozens_of_uploads_are_capped_with_a_message():
    photos = sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:40]
    at = app("views/samples.py", model="hymenoptera-met")
    at.file_uploader(key="uploads").set_value([(p.name, p.read_bytes(), "image/jpeg") for p in photos]).run()
    assert not at.exception
    assert any("40 files uploaded; only the first 32 are answered" in w.value for w in at.warning)
    assert len(at.table[0].value) == 32


def _hostile_checkpoint(tmp_path, kind: str):
    """A copy of the shipped ants/bees checkpoint, damaged one way; returns the path the user types."""
    import json
    import shutil

    import numpy as np
    import torch

    from met_core.io.traces import load_trace, save_trace

    d = tmp_path / kind
    shutil.copytree(CKPT / "hymenoptera-met", d)
    cfg = json.loads((d / "config.json").read_text())
    if kind == "not-json":
        (d / "config.json").write_text("{'model': oops")
    elif kind == "missing-keys":
        (d / "config.json").write_text(json.dumps({"format": cfg["format"]}))
    elif kind == "pickle":
        torch.save({"state": 1}, d / "model.pt")
        return d / "model.pt"
    elif kind == "weights-outside":
        cfg["model"]["weights"] = "/etc/passwd"
        (d / "config.json").write_text(json.dumps(cfg))
    elif kind == "truncated-weights":
        (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:2000])
    elif kind == "nan-trace":
        t = load_trace(d / "test_trace.npz")
        t.logits = t.logits.copy()
        t.logits[3, 1, 0] = np.nan
        save_trace(d / "test_trace.npz", t)
    elif kind == "other-models-trace":
        (d / "config.json").write_text(json.dumps(cfg, indent=1))  # same model, other bytes: another hash
    return d


HOSTILE_CHECKPOINTS = {
    "not-json": "not valid JSON",
    "missing-keys": "no 'model' section",
    "pickle": "never unpickles",
    "weights-outside": "outside the checkpoint folder",
    "truncated-weights": "corrupted or truncated",
    "nan-trace": "NaN or inf",
    "other-models-trace": "made by another model",
}


@pytest.mark.parametrize("kind", list(HOSTILE_CHECKPOINTS))
def test_hostile_checkpoint_folders_get_one_sentence_and_keep_state(tmp_path, kind):
    path = _hostile_checkpoint(tmp_path, kind)
    at = app()
    at.slider(key="w:threshold").set_value(0.7).run()
    at.switch_page("views/models.py").run()
    at.text_input(key="w:local.new_checkpoint").set_value(str(path)).run()
    at.button(key="add_ckpt").click().run()
    assert not at.exception
    if kind in ("nan-trace", "other-models-trace"):  # the folder itself is sound: it is added, its trace refused
        view(at).model = str(path)  # what selecting its row in the table does
        at.switch_page("views/whatif.py").run()
        assert not at.exception
    errors = [shown(e.value) for e in at.error]
    assert len(errors) == 1 and HOSTILE_CHECKPOINTS[kind] in errors[0] and "\n" not in errors[0], errors
    assert view(at).threshold == 0.7


def test_a_pixel_strip_and_two_uploads_with_one_name(tmp_path):
    """A few hundred bytes that would resize to gigabytes are refused from the header; same-named files are both
    answered (the page keys its charts by position, not by name)."""
    import io

    from PIL import Image

    strip = io.BytesIO()
    Image.new("L", (1, 30_000), 90).save(strip, "PNG", optimize=True)
    assert len(strip.getvalue()) < 2000
    photo = next((HYMENOPTERA / "val" / "bees").glob("*.jpg")).read_bytes()
    at = app("views/samples.py", model="hymenoptera-met")
    at.file_uploader(key="uploads").set_value(
        [
            ("same.jpg", photo, "image/jpeg"),
            ("same.jpg", photo, "image/jpeg"),
            ("strip.png", strip.getvalue(), "image/png"),
        ]
    ).run()
    assert not at.exception
    assert [shown(i) for i in at.table[0].value.index] == ["same.jpg", "same.jpg"]
    assert any(
        "strip.png is 1x30000 pixels" in shown(e.value) and "crop it closer to square" in shown(e.value)
        for e in at.error
    )


def test_whatif_shows_intervals_and_a_certified_mode_with_met_cores_numbers():
    from met_core.analysis.certify import certify_max_loss

    at = app()
    assert any("95 % intervals on these 10,000 test images: accuracy" in c.value for c in at.caption)
    at.radio(key="w:mode").set_value("certified").run()
    assert not at.exception
    cal_file = next(p for p in (CKPT / DEFAULT_MODEL / n for n in ("cal_trace.npz", "val_trace.npz")) if p.is_file())
    c = certify_max_loss(TraceArrays.from_trace(load_trace(cal_file)), 0.01, 0.1)
    shown_msgs = [shown(x.value) for x in [*at.success, *at.warning]]
    assert any(c.message in m and cal_file.name in m for m in shown_msgs), shown_msgs
    test = TraceArrays.from_trace(load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz"))
    want = whatif(test, c.thresholds or [2.0, 2.0, 2.0, None])
    assert metric(at, "Accuracy") == f"{100 * want.accuracy:.2f}%"


def test_a_link_restores_model_policy_thresholds_and_page_and_a_bad_value_is_one_sentence():
    at = AppTest.from_file(str(ROOT / "met_core" / "app" / "main.py"), default_timeout=240)
    at.query_params.update({"model": "cifar10-met", "policy": "max-softmax", "t": "0.6,0.7,0.9", "exit": "9"})
    at.run()
    warned = [shown(w.value) for w in at.warning]
    at.switch_page("views/whatif.py").run()
    assert not at.exception
    arrays = TraceArrays.from_trace(load_trace(CKPT / "cifar10-met" / "test_trace.npz"))
    r = whatif(arrays, [0.6, 0.7, 0.9])
    assert at.radio(key="w:mode").value == "per-exit"
    assert metric(at, "Accuracy") == f"{100 * r.accuracy:.2f}%" and metric(at, "Mean GMACs") == f"{r.gmacs:.4f}"
    assert warned == ["The link's exit= was ignored: it must be an exit number from 1 to 4."], warned
    # an old-style link (t= with one value per exit) is rewritten in today's form: per-exit mode and te=
    assert at.query_params["te"] == "0.6,0.7,0.9" and at.query_params["mode"] == "per-exit"
    assert at.query_params["model"] == "cifar10-met" and "t" not in at.query_params


@pytest.mark.parametrize("bad", ["1e999", "nan", "0.5," * 200, "<b>x</b>", "0.1,0.2"])
def test_hostile_link_thresholds_are_refused_in_one_sentence(bad):
    at = AppTest.from_file(str(ROOT / "met_core" / "app" / "main.py"), default_timeout=240)
    at.query_params.update({"t": bad, "model": "no such model [x](http://e.x)"})
    at.run()
    assert not at.exception
    warned = [shown(w.value) for w in at.warning]
    assert len(warned) == 2 and all(w.startswith("The link's ") and "\n" not in w for w in warned), warned
    at.switch_page("views/whatif.py").run()
    assert at.slider(key="w:threshold").value == 0.8  # the default view still opens


@pytest.mark.parametrize("bad", ["0.5", "2.5", "5"])
def test_a_link_with_a_patience_threshold_that_is_no_count_of_exits_is_refused(bad):
    at = AppTest.from_file(str(ROOT / "met_core" / "app" / "main.py"), default_timeout=240)
    at.query_params.update({"policy": "patience", "t": bad})
    at.run()
    assert not at.exception
    warned = [shown(w.value) for w in at.warning]
    assert warned == ["The link's t= was ignored: it must be one whole number between 1 and 4."], warned
    at.switch_page("views/whatif.py").run()
    assert at.slider(key="w:threshold").value == 2  # the policy's default count


def test_journey_of_a_test_image_leaves_where_the_trace_says():
    from met_core.analysis.whatif import outcomes

    trace = load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz")
    arrays = TraceArrays.from_trace(trace)
    o = outcomes(arrays, 0.8)
    for i in (0, int(o.exits.argmax())):
        at = AppTest.from_file(str(ROOT / "met_core" / "app" / "main.py"), default_timeout=240)
        at.query_params.update({"image": str(trace.ids[i]), "step": "4"})  # the last step: where it leaves
        at.run()
        at.switch_page("views/journey.py").run()
        assert not at.exception
        block = trace.meta["exits"][o.exits[i]]
        want = f"Leaves at exit {o.exits[i] + 1}, after block {block}: predicts **{trace.class_names[o.pred[i]]}**"
        assert any(want in shown(m.value) for m in at.markdown), [m.value for m in at.markdown]
        assert metric(at, "Blocks run") == f"{block} of 12"


def test_models_table_has_test_and_validation_accuracy_per_exit():
    from met_core.analysis.whatif import exit_accuracy_all

    at = app("views/models.py")
    table = at.dataframe[0].value.set_index("checkpoint")
    arrays = TraceArrays.from_trace(load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz"))
    assert table.loc[DEFAULT_MODEL, "test accuracy per exit (%)"] == " / ".join(
        f"{100 * a:.1f}" for a in exit_accuracy_all(arrays)
    )
    assert table.loc["cifar10-met-strong-gr", "graph reg. lambda"] == 2.0
    assert table.loc[DEFAULT_MODEL, "val. accuracy per exit (%)"].count("/") == 3


def test_every_chart_uses_the_fixed_class_exit_and_model_colours():
    """The figures the pages build, drawn with AppTest: every coloured series takes its colour from app/palette."""
    import json

    from met_core.app.palette import CLASS_COLOURS, OKABE_ITO

    allowed = {c.lower() for c in (*CLASS_COLOURS, *OKABE_ITO)} | {"#888", "#999", "#000", "#555", "#777"}
    at = AppTest.from_file(str(ROOT / "met_core" / "app" / "main.py"), default_timeout=240)
    at.query_params.update({"cm": "1", "rel": "1"})
    at.run()
    seen = 0
    for page in ("views/whatif.py", "views/representations.py", "views/journey.py"):
        at.switch_page(page).run()
        assert not at.exception
        for chart in at.get("plotly_chart"):
            fig = json.loads(chart.proto.spec)
            for trace in fig.get("data", []):
                colours = []
                for holder in (trace.get("marker") or {}, trace.get("line") or {}):
                    c = holder.get("color")
                    colours += c if isinstance(c, list) else [c] if isinstance(c, str) else []
                for c in colours:
                    seen += 1
                    assert c.lower().replace(" ", "") in {a.replace(" ", "") for a in allowed}, (
                        page,
                        trace.get("name"),
                        c,
                    )
    assert seen > 50


def test_an_upload_is_shown_with_its_own_time_and_a_photo_of_another_kind_gets_a_caution():
    photo = next((HYMENOPTERA / "val" / "bees").glob("*.jpg"))
    cifar = next((ROOT.parent / "shared" / "datasets" / "cifar10" / "test" / "cat").glob("*.jpg"))
    at = app("views/samples.py")
    at.file_uploader(key="uploads").set_value(
        [(photo.name, photo.read_bytes(), "image/jpeg"), (cifar.name, cifar.read_bytes(), "image/jpeg")]
    ).run()
    assert not at.exception
    assert len(at.image) >= 2  # the uploads themselves, as thumbnails
    cautions = [shown(w.value) for w in at.warning if "Probably not one of this model's classes" in shown(w.value)]
    assert len(cautions) == 1, [shown(w.value) for w in at.warning]  # the bee, not the CIFAR-10 cat
    assert any("at most 5 % of images like the training data are flagged" in shown(c.value) for c in at.caption)
    # where the bee may belong: the ants-and-bees model, whose own caution accepts it
    assert "Not flagged by hymenoptera-met (196 training images): pick it on the Models page" in cautions[0], cautions


def test_the_start_page_names_the_model_and_its_try_this_buttons_open_prepared_views():
    from met_core.analysis.calibration import apply, calibrate_budget
    from met_core.analysis.whatif import outcomes

    test = TraceArrays.from_trace(load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz"))
    cal = TraceArrays.from_trace(load_trace(CKPT / DEFAULT_MODEL / "cal_trace.npz"))
    at = app(page=None)
    assert [t.value for t in at.title] == ["MET Explorer"]
    assert any("The model in use: cifar10" in shown(c.value) for c in at.caption)
    at.button(key="try_budget").click().run()
    assert not at.exception and [t.value for t in at.title] == ["Threshold what-if"]
    want = apply(test, calibrate_budget(cal, 0.5, "max-softmax"), "max-softmax").measured
    assert view(at).mode == "per-exit" and metric(at, "Mean GMACs") == f"{want.gmacs:.4f}"
    at.switch_page("views/start.py").run()
    at.button(key="try_journey").click().run()
    assert not at.exception and [t.value for t in at.title] == ["An image's journey"]
    o = outcomes(test, want.thresholds, "max-softmax")
    assert o.exits[list(load_trace(CKPT / DEFAULT_MODEL / "test_trace.npz").ids).index(view(at).journey.image)] == 3


def test_large_type_enlarges_every_page_and_a_reload_or_a_copied_link_keeps_it():
    """Large type was lost on a reload (it lived in the session only)."""

    def large(at: AppTest) -> bool:
        return any("html { font-size: 21px; }" in (h.proto.body or "") for h in at.get("html"))

    at = app("views/whatif.py")
    assert not large(at)
    at.toggle(key="w:large_type").set_value(True).run()
    assert not at.exception and large(at)
    at.switch_page("views/journey.py").run()
    assert not at.exception and large(at) and at.toggle(key="w:large_type").value
    assert at.query_params["large"] == ["1"] or at.query_params["large"] == "1"
    again = app("views/journey.py", **{k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()})
    assert large(again) and again.toggle(key="w:large_type").value  # the link, opened afresh


def test_streamlit_run_app_main_in_a_checkout_starts_the_same_app():
    """`streamlit run app/main.py` (the checkout's entry) runs met_core/app: its pages and its page switches."""
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    at.run()
    assert not at.exception and [t.value for t in at.title] == ["MET Explorer"]
    at.button(key="try_budget").click().run()
    assert not at.exception and [t.value for t in at.title] == ["Threshold what-if"]


def test_a_stale_exact_entry_sent_with_a_slider_move_never_overwrites_the_slider():
    """Fast arrow keys on a loaded machine: the browser sends the slider's new value together with the exact
    entry's older text (it has not yet received the new one). The slider's value is the one used, everywhere;
    the entry takes effect only when submitted."""
    at = app()
    at.slider(key="w:threshold").set_value(0.9).run()
    at.text_input(key="w:threshold:exact").set_value("0.8")  # the browser's older copy of the entry, sent back
    at.slider(key="w:threshold").set_value(0.91).run()  # with the next arrow key's event
    assert not at.exception and view(at).threshold == 0.91
    assert at.slider(key="w:threshold").value == 0.91 and at.text_input(key="w:threshold:exact").value == "0.91"
    at.text_input(key="w:threshold:exact").set_value("0.123456")
    at.button(key="w:threshold:exact:use").click().run()  # Enter or Use: now it is applied
    assert view(at).threshold == 0.123456 and at.query_params["t"] == "0.123456"
