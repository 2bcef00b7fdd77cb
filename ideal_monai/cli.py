"""The ``ideal-monai`` command (python-fire).

    ideal-monai synth     --output_dir DIR [--num_cases N --seed S --with_cine | --dicom]
    ideal-monai pretrain  --dataset_dir DATA [--bundle_root DIR] [--<config key> VALUE ...]
    ideal-monai finetune  --dataset_dir DATA [--bundle_root DIR] [--<config key> VALUE ...]
    ideal-monai infer     --dataset_dir IMAGES --output_dir OUT [--bundle_root DIR] [--overwrite]
    ideal-monai evaluate  --prediction_dir PRED --dataset_dir GT --output_dir REPORT
    ideal-monai function  --dataset_dir IMAGES --output_dir REPORT [--bundle_root DIR] [--prediction_dir SEG] [--label_dir GT]
    ideal-monai status    OUT                       (how far an infer / function run into OUT is, and what failed)
    ideal-monai demo      [--output_dir DIR]
    ideal-monai label-app --output_dir APP [--model_path model.pt] [--overwrite] [--<config key> VALUE ...]
    ideal-monai label-server --app APP --studies IMAGES [--port 8000] [--allow_origin URL] [--max_pending 4]
    ideal-monai bundle    --output_dir DIR [--model_path MODEL.pt or MODELS_DIR]

``infer`` and ``function`` finish what is missing in their output folder (a rerun after a crash does
only the rest); under ``torchrun --nproc_per_node N`` (``--no-python ideal-monai ...``) the processes
share the cases out (:mod:`ideal_monai.cohort`).

Errors in the input print one line (``ideal-monai: error: <file>: <problem>``) and exit with
status 1; ``--debug`` (or ``IDEAL_MONAI_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback

import fire

from .errors import debug_enabled, find_user_error, print_error


def synth(output_dir: str, num_cases: int = 20, seed: int = 0, with_cine: bool = False, dicom: bool = False) -> None:
    """Write synthetic ACDC-layout cardiac phantoms (images + labels) to ``output_dir``; with ``--dicom``,
    phantom cines as oblique DICOM MR series instead (one folder per patient, no labels)."""
    from .data.synthetic import write_synthetic_dataset, write_synthetic_dicom
    from .utils.config_checks import check_config_values

    check_config_values({"with_cine": with_cine, "num_cases": num_cases, "seed": seed, "dicom": dicom})
    if dicom:
        written = write_synthetic_dicom(output_dir, num_cases=num_cases, seed=seed)
        print(f"wrote {len(written)} DICOM cine series to {output_dir}")
        return
    paths = write_synthetic_dataset(output_dir, num_cases=num_cases, seed=seed, with_cine=with_cine)
    print(f"wrote {len(paths)} files for {num_cases} cases to {output_dir}")


def pretrain(dataset_dir: str, bundle_root: str | None = None, **overrides) -> None:
    """Stage 1: dense local contrastive pre-training (bundle run id ``pretrain``)."""
    from .bundle_runner import run_bundle

    if bundle_root:
        overrides["bundle_root"] = bundle_root
    run_bundle("pretrain", dataset_dir=dataset_dir, **overrides)


def finetune(dataset_dir: str, bundle_root: str | None = None, **overrides) -> None:
    """Stage 2: semi-supervised two-stream fine-tuning (bundle run id ``finetune``)."""
    from .bundle_runner import run_bundle

    if bundle_root:
        overrides["bundle_root"] = bundle_root
    run_bundle("finetune", dataset_dir=dataset_dir, **overrides)


def infer(dataset_dir: str, output_dir: str, bundle_root: str | None = None, overwrite: bool = False, **overrides) -> None:
    """Segment a folder (or one file) of short-axis volumes into NIfTI labels (run id ``inference``).

    Files segmented before (outputs newer than the input) are kept; ``--overwrite`` redoes them. Under
    ``torchrun`` the processes share the files out."""
    from .bundle_runner import multi_process_configs, run_bundle
    from .utils.config_checks import check_config_values

    # bool("false") is True: a string would silently overwrite existing predictions.
    check_config_values({"overwrite": overwrite})
    if bundle_root:
        overrides["bundle_root"] = bundle_root
    run_bundle("inference", extra_configs=multi_process_configs("inference"), dataset_dir=dataset_dir,
               output_dir=output_dir, overwrite=overwrite, **overrides)


def evaluate(prediction_dir: str, dataset_dir: str, output_dir: str, overlays: bool = True, max_overlays: int = 12) -> None:
    """Score predictions against ground-truth labels: CSV, JSON, Markdown report and PNG overlays."""
    from .evaluation import evaluate_folders
    from .utils.config_checks import check_config_values

    check_config_values({"overlays": overlays, "max_overlays": max_overlays})
    summary = evaluate_folders(prediction_dir, dataset_dir, output_dir, overlays=overlays, max_overlays=max_overlays)
    overall = summary["overall"]
    print(f"mean DSC {overall['dsc_mean']:.3f} over {summary['n_cases']} volume(s), {overall['n_failures']} failure(s); "
          f"report: {os.path.join(output_dir, 'report.md')}")


def function(dataset_dir: str, output_dir: str, bundle_root: str | None = None, **overrides) -> None:
    """Cardiac function (volumes, EF, mass; agreement with ground truth) per patient (run id ``function``).

    Patients computed before are kept (``--overwrite`` redoes them); under ``torchrun`` the processes share
    the patients out and rank 0 writes the cohort's report."""
    from .bundle_runner import multi_process_configs, run_bundle

    if bundle_root:
        overrides["bundle_root"] = bundle_root
    run_bundle("function", extra_configs=multi_process_configs("function"), dataset_dir=dataset_dir,
               output_dir=output_dir, **overrides)


def status(output_dir: str, json: bool = False) -> None:
    """How far the ``infer`` / ``function`` run writing into ``output_dir`` is: done, failed (with the reason),
    left. Exits 0 when every case is done, 1 when some failed or are left. ``--json``: the status as JSON."""
    import json as json_module

    from .cohort import read_status, status_line
    from .utils.config_checks import check_config_values

    check_config_values({"json": json})
    state = read_status(output_dir)
    if json:
        print(json_module.dumps({k: v for k, v in state.items() if k != "cases"}, indent=1))
    else:
        print(status_line(state))
        for f in state["failures"]:
            print(f"failed: {f['case_id']}: {f['reason']}")
    if not state["complete"]:
        raise SystemExit(1)


def demo(output_dir: str = "demo_output", **kwargs) -> None:
    """Phantoms -> pre-train -> fine-tune -> infer -> evaluate, in a few minutes on a CPU."""
    from .demo import run_demo

    run_demo(output_dir, **kwargs)


def label_app(output_dir: str, model_path: str | None = None, overwrite: bool = False, **overrides) -> None:
    """Lay out a MONAI Label app folder serving this bundle (needs ``pip install 'ideal-monai[label]'``)."""
    from .label.app import make_label_app
    from .utils.config_checks import check_config_values

    check_config_values({"overwrite": overwrite})
    out = make_label_app(output_dir, model_path=model_path, overwrite=overwrite, **overrides)
    print(f"MONAI Label app written to {out}; start it with:\n"
          f"  ideal-monai label-server --app {out} --studies <images>")


def _strings(value) -> tuple[str, ...]:
    """A repeatable or comma-separated option (fire gives a str, or a tuple for ``[a,b]``) as a tuple."""
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return tuple(v.strip() for v in str(value).split(",") if v.strip()) if value else ()


def label_server(app: str, studies: str, host: str = "127.0.0.1", port: int = 8000, allowed_host=(), allow_origin=(),
                 max_pending: int = 4, max_upload_mb: float = 256.0, max_image_mb: float = 1024.0,
                 max_ratio: float = 100.0, log_level: str = "info") -> None:
    """Serve a ``label-app`` folder with MONAI Label on 127.0.0.1, with safe defaults (needs the [label] extra):
    only the studies' ids or the request's own upload are read, uploads are size-checked, a foreign ``Host``
    or web-page ``Origin`` is refused (``--allow_origin`` for a viewer served elsewhere, ``--allowed_host`` for
    another name), at most ``--max_pending`` inferences at once (then 429)."""
    from .label.server import LOOPBACK_NAMES, ServerSettings, serve
    from .label.uploads import UploadLimits

    settings = ServerSettings(allowed_hosts=tuple(dict.fromkeys((*LOOPBACK_NAMES, *_strings(allowed_host)))),
                              allowed_origins=_strings(allow_origin), max_pending=max_pending,
                              limits=UploadLimits(max_upload_mb, max_image_mb, max_ratio))
    serve(app, studies, host=host, port=port, settings=settings, log_level=log_level)


def bundle(output_dir: str, model_path: str | None = None) -> None:
    """Write a standalone copy of the bundle (configs, docs, LICENSE, models/model.pt) in the model-zoo layout."""
    from .bundle_export import export_bundle
    from .release import model_label, shipped_model_file

    out = export_bundle(output_dir, model_path=model_path)
    weights = model_label(shipped_model_file()) + ", the shipped model" if model_path is None else model_label(
        f"{out}/models/model.pt")
    print(f"bundle written to {out} (models/model.pt: {weights}); run it with:\n"
          f"  python -m monai.bundle run inference --config_file {out}/configs/inference.json --bundle_root {out} "
          f"--dataset_dir <images> --output_dir <predictions>")


def _print_traceback(exc: BaseException) -> None:
    """The full traceback on stderr. CPython 3.11's traceback module re-parses source lines with ``ast``
    to draw ``^^^`` markers, and that can itself raise ``SystemError`` ("AST constructor recursion
    depth mismatch") after a deep recursion; then print the frames without the markers."""
    try:
        traceback.print_exception(exc)
    except SystemError:
        chain = []
        while exc is not None and exc not in chain:  # root cause first, as Python prints it
            chain.insert(0, exc)
            exc = exc.__cause__ or exc.__context__
        for e in chain:
            frames = traceback.extract_tb(e.__traceback__)
            lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}\n    {f.line}\n' for f in frames]
            sys.stderr.write("Traceback (most recent call last):\n" + "".join(lines)
                             + "".join(traceback.format_exception_only(type(e), e)))


COMMANDS = {"synth": synth, "pretrain": pretrain, "finetune": finetune, "infer": infer, "evaluate": evaluate,
            "function": function, "status": status, "demo": demo,
            "label_app": label_app, "label_server": label_server, "bundle": bundle}  # fire also accepts "label-app"


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled()
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    try:
        fire.Fire(COMMANDS, command=argv, name="ideal-monai")
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except BaseException as e:  # noqa: BLE001 - the one place that turns errors into exit codes
        if debug:
            _print_traceback(e)
            return 1
        input_error = find_user_error(e)
        seen = {id(e)}
        while input_error is None and (e.__cause__ or e.__context__) is not None:
            # MONAI wraps errors in "Failed to evaluate ConfigExpression": report the innermost one.
            e = e.__cause__ or e.__context__
            if id(e) in seen:
                break
            seen.add(id(e))
        text = str(e).strip().splitlines()
        message = str(input_error) if input_error else f"{type(e).__name__}: {text[0] if text else ''}"
        print_error(f"{message} (--debug shows the traceback)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
