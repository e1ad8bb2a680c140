"""Inner problems for learned optimizers: models, offline TFDS datasets, task families, suites.

Importing this package loads no data; datasets are read (and local ones built) when a task is
built. Public names are re-exported here. Needs the `meta` extra: pip install 'learned-opt[meta]'.
"""

from learned_opt._extras import require_meta

require_meta("tasks")

from tasks.autoencoder import AutoencoderTask, make_autoencoder_task
from tasks.base import Task, TaskFamily, TaskInfo, held_out_loss
from tasks.classification import ClassificationTask, make_classification_task
from tasks.families import AutoencoderFamily, CNNFamily, LanguageModelFamily, MixtureFamily, MLPFamily
from tasks.language_model import LanguageModelTask, make_language_model_task
from tasks.specs import AutoencoderSpec, ClassificationSpec, LanguageModelSpec
from tasks.stacking import stack_tasks
from tasks.suites import FAMILIES, SUITES, SuiteEntry, meta_train_small

__all__ = [
    "held_out_loss", "meta_train_small", "FAMILIES", "SUITES", "SuiteEntry", "LanguageModelTask", "make_language_model_task",
    "AutoencoderFamily", "AutoencoderSpec", "AutoencoderTask", "make_autoencoder_task", "ClassificationSpec", "ClassificationTask", "CNNFamily", "LanguageModelFamily", "LanguageModelSpec", "MixtureFamily",
    "MLPFamily", "Task",
    "TaskFamily", "TaskInfo", "make_classification_task", "stack_tasks",
]
