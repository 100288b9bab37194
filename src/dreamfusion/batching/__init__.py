"""Many runs: a prompts file (`plan`) run as Ray tasks (`runner`), with a results table at the end."""

from dreamfusion.batching.plan import RunSpec, check_specs, read_prompts_file
from dreamfusion.batching.runner import BatchOutcome, RayMissingError, run_batch

__all__ = ["BatchOutcome", "RayMissingError", "RunSpec", "check_specs", "read_prompts_file", "run_batch"]
