#!/usr/bin/env bash
# Verify that train and validation use different transforms (seed 004).
# Flags go to the check, e.g. --data-dir DIR, or --code ../v1-baseline to check another version.
set -euo pipefail
VERSION_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
python "$VERSION_DIR/scripts/check_transforms.py" "$@"
