"""The one-line error a user sees: after any open progress bar, never on the end of one."""

from __future__ import annotations

import io

from ignite.engine import Engine, Events
from tqdm import tqdm

from ideal_monai.errors import print_error
from ideal_monai.handlers import ProgressBar


def test_error_line_comes_after_the_open_progress_bar(capsys):
    engine = Engine(lambda e, b: None)
    bar = ProgressBar(desc="finetune")
    bar.attach(engine)

    @engine.on(Events.ITERATION_COMPLETED)
    def fail_half_way(e):
        if e.state.iteration == 3:
            print_error("case.nii.gz: is not a NIfTI file")
            e.terminate()

    engine.run(range(10), max_epochs=1)
    err = capsys.readouterr().err
    assert err.rstrip("\n").splitlines()[-1] == "ideal-monai: error: case.nii.gz: is not a NIfTI file"


def test_a_closed_or_foreign_bar_does_not_stop_the_message(capsys):
    stray = tqdm(total=5, file=io.StringIO())  # a bar nobody registered: left alone
    print_error("x: y")
    stray.close()
    assert capsys.readouterr().err == "ideal-monai: error: x: y\n"
