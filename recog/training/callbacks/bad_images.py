"""The bad-image report at the end of training (``BadImageReport``)."""

import logging

from recog.data.bad_images import FILE_NAME, summarize
from recog.training.callbacks.base import Callback
from recog.utils.runtime import is_main_process

log = logging.getLogger(__name__)


class BadImageReport(Callback):
    """Images the run skipped (``data.on_bad_image=skip``; recorded by the loaders in
    ``<run dir>/bad_images.tsv``): one warning summing them up, and the file as an MLflow artifact."""

    def on_fit_end(self, trainer, state):
        record = trainer.run_dir / FILE_NAME
        if is_main_process() and record.is_file():
            log.warning("%s", summarize(record))
            trainer.tracker.log_artifact(record)
