"""Meta-World datasets: collection with scripted policies, the on-disk format, the window sampler.

See `data/README.md` for the format and the seed convention.
"""

from dt_eva.data.collect import ENV_SEED_BASE, EPISODES_PER_ENV_SEED, collect_dataset, collection_env_seed
from dt_eva.data.format import ARRAY_SPECS, FORMAT_VERSION, DatasetError, OfflineDataset, dataset_summary, load_dataset
from dt_eva.data.sampler import WindowSampler

__all__ = [
    "ARRAY_SPECS",
    "ENV_SEED_BASE",
    "EPISODES_PER_ENV_SEED",
    "FORMAT_VERSION",
    "DatasetError",
    "OfflineDataset",
    "WindowSampler",
    "collect_dataset",
    "collection_env_seed",
    "dataset_summary",
    "load_dataset",
]
