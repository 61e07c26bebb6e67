"""Pure mapping from MLflow's vocabulary to Aim's (no I/O except reading a rules file):

- metric key  -> (Aim metric name, context)            `keys.ContextMapper`
- param value -> typed Python value                     `params.parse_param`
- MLflow tags -> description, labels, user tags          `tags.split_tags`, `tags.LabelPolicy`
- git tags, entry point, logged requirements -> Aim's `__system_params`   `system_params`
- a run       -> its Aim metadata                       `run_meta.run_meta`
- artifact    -> Aim object kind                         `artifact_kinds.artifact_kind`
- artifacts   -> Aim media sequences (step images, ...)    `media_names.media_of`, `media_names.targets`
- logged models -> the `mlflow.logged_models` param, `{model: ...}` series   `model_series`
"""

from .artifact_kinds import artifact_kind
from .keys import (
    ISO_639_1,
    SUBSET_PREFIXES,
    SYSTEM_PREFIX,
    ContextMapper,
    MappedMetric,
    Rule,
    RulesFileError,
    RunContextMapper,
    hf_eval_sets,
    load_rules,
    system_metric,
    system_metric_name,
)
from .params import parse_param, parse_params
from .run_meta import RunMeta, run_meta
from .system_params import SYSTEM_PARAMS, system_params
from .tags import (
    GIT_COMMIT_TAG,
    NOTE_TAG,
    PARENT_TAG,
    RUN_NAME_TAG,
    SOURCE_TAG,
    USER_TAG,
    LabelPolicy,
    TagSplit,
    is_identifier,
    split_tags,
    tag_labels,
)

__all__ = [
    "GIT_COMMIT_TAG",
    "ISO_639_1",
    "NOTE_TAG",
    "PARENT_TAG",
    "RUN_NAME_TAG",
    "SOURCE_TAG",
    "SUBSET_PREFIXES",
    "SYSTEM_PARAMS",
    "SYSTEM_PREFIX",
    "USER_TAG",
    "ContextMapper",
    "LabelPolicy",
    "MappedMetric",
    "Rule",
    "RulesFileError",
    "RunContextMapper",
    "RunMeta",
    "TagSplit",
    "artifact_kind",
    "hf_eval_sets",
    "is_identifier",
    "load_rules",
    "parse_param",
    "parse_params",
    "run_meta",
    "split_tags",
    "system_metric",
    "system_metric_name",
    "system_params",
    "tag_labels",
]
