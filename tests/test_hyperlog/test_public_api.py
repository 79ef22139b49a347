"""The public surface of hyperlog, and the dependency rule: it never imports pinecone_trio."""

from __future__ import annotations

import subprocess
import sys

import hyperlog


def test_every_export_exists() -> None:
    for name in hyperlog.__all__:
        assert hasattr(hyperlog, name), name


def test_hyperlog_and_hamt_do_not_import_pinecone_trio() -> None:
    code = (
        "import sys, hyperlog, hyperlog.replication, hamt\n"
        "assert not any(m.startswith('pinecone_trio') for m in sys.modules), 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
