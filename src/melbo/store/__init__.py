"""What melbo keeps on disk: files that cannot half-exist and bounded readers of user files
(:mod:`melbo.store.io`), the shared cache and its lock (:mod:`melbo.store.cache`), torch.compile's
cache (:mod:`melbo.store.compile_cache`) and how melbo recognises its own outputs, which
``--force`` may replace (:mod:`melbo.store.outputs`)."""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "CACHE_ENV_VAR": "melbo.store.cache:CACHE_ENV_VAR",
    "cache_dir": "melbo.store.cache:cache_dir",
    "cache_lock": "melbo.store.cache:cache_lock",
    "lock_path": "melbo.store.cache:lock_path",
    "TORCH_CACHE_ENV_VAR": "melbo.store.compile_cache:TORCH_CACHE_ENV_VAR",
    "default_compile_cache_dir": "melbo.store.compile_cache:default_compile_cache_dir",
    "resolve_compile_cache": "melbo.store.compile_cache:resolve_compile_cache",
    "torch_compile_cache": "melbo.store.compile_cache:torch_compile_cache",
    "MAX_JSON_BYTES": "melbo.store.io:MAX_JSON_BYTES",
    "MAX_JSON_DEPTH": "melbo.store.io:MAX_JSON_DEPTH",
    "MAX_TEXT_BYTES": "melbo.store.io:MAX_TEXT_BYTES",
    "FileFormatError": "melbo.store.io:FileFormatError",
    "atomic_write": "melbo.store.io:atomic_write",
    "atomic_write_text": "melbo.store.io:atomic_write_text",
    "check_output": "melbo.store.io:check_output",
    "claim_out_dir": "melbo.store.io:claim_out_dir",
    "file_sha256": "melbo.store.io:file_sha256",
    "fsync_dir": "melbo.store.io:fsync_dir",
    "fsync_tree": "melbo.store.io:fsync_tree",
    "json_depth": "melbo.store.io:json_depth",
    "parse_json": "melbo.store.io:parse_json",
    "read_file_set": "melbo.store.io:read_file_set",
    "read_json_file": "melbo.store.io:read_json_file",
    "read_text_file": "melbo.store.io:read_text_file",
    "record_output": "melbo.store.io:record_output",
    "split_lines": "melbo.store.io:split_lines",
    "write_file_set": "melbo.store.io:write_file_set",
    "wrote_output": "melbo.store.io:wrote_output",
    "analysis_file": "melbo.store.outputs:analysis_file",
    "control_vector_file": "melbo.store.outputs:control_vector_file",
    "features_dir": "melbo.store.outputs:features_dir",
    "lm_eval_file": "melbo.store.outputs:lm_eval_file",
    "monitor_file": "melbo.store.outputs:monitor_file",
    "monitor_scores_file": "melbo.store.outputs:monitor_scores_file",
    "organism_dir": "melbo.store.outputs:organism_dir",
    "rank_file": "melbo.store.outputs:rank_file",
    "report_file": "melbo.store.outputs:report_file",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from melbo.store.cache import CACHE_ENV_VAR as CACHE_ENV_VAR
    from melbo.store.cache import cache_dir as cache_dir
    from melbo.store.cache import cache_lock as cache_lock
    from melbo.store.cache import lock_path as lock_path
    from melbo.store.compile_cache import TORCH_CACHE_ENV_VAR as TORCH_CACHE_ENV_VAR
    from melbo.store.compile_cache import default_compile_cache_dir as default_compile_cache_dir
    from melbo.store.compile_cache import resolve_compile_cache as resolve_compile_cache
    from melbo.store.compile_cache import torch_compile_cache as torch_compile_cache
    from melbo.store.io import MAX_JSON_BYTES as MAX_JSON_BYTES
    from melbo.store.io import MAX_JSON_DEPTH as MAX_JSON_DEPTH
    from melbo.store.io import MAX_TEXT_BYTES as MAX_TEXT_BYTES
    from melbo.store.io import FileFormatError as FileFormatError
    from melbo.store.io import atomic_write as atomic_write
    from melbo.store.io import atomic_write_text as atomic_write_text
    from melbo.store.io import check_output as check_output
    from melbo.store.io import claim_out_dir as claim_out_dir
    from melbo.store.io import file_sha256 as file_sha256
    from melbo.store.io import fsync_dir as fsync_dir
    from melbo.store.io import fsync_tree as fsync_tree
    from melbo.store.io import json_depth as json_depth
    from melbo.store.io import parse_json as parse_json
    from melbo.store.io import read_file_set as read_file_set
    from melbo.store.io import read_json_file as read_json_file
    from melbo.store.io import read_text_file as read_text_file
    from melbo.store.io import record_output as record_output
    from melbo.store.io import split_lines as split_lines
    from melbo.store.io import write_file_set as write_file_set
    from melbo.store.io import wrote_output as wrote_output
    from melbo.store.outputs import analysis_file as analysis_file
    from melbo.store.outputs import control_vector_file as control_vector_file
    from melbo.store.outputs import features_dir as features_dir
    from melbo.store.outputs import lm_eval_file as lm_eval_file
    from melbo.store.outputs import monitor_file as monitor_file
    from melbo.store.outputs import monitor_scores_file as monitor_scores_file
    from melbo.store.outputs import organism_dir as organism_dir
    from melbo.store.outputs import rank_file as rank_file
    from melbo.store.outputs import report_file as report_file

del TYPE_CHECKING, lazy_exports
