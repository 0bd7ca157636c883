#!/usr/bin/env bash
# Here, not on the device: make the working tree that a GPU call sends small, so that the data can
# travel in the same call. A call sends the tracked files plus what it carries, 64 MiB in all; the
# tracked tree is 51 MB since 2026-12-07, 46 MB of it the records under runs/, which no GPU run reads.
# Then Fashion-MNIST's .gz files (30 MB) or the exported Imagenette subset (43.6 MB) do not fit
# beside it, and the data had to travel in parts over consecutive calls (fm-data.sh, carry.sh).
#
#   bash runs/device-tree.sh hide PATH...   # runs/ leaves the index except PATH... (the scripts the
#                                           # call runs); the files stay on disk, untouched
#   (the device calls, e.g. carry [".gpu/fashion-mnist"])
#   bash runs/device-tree.sh restore        # the index as it was: `git status` clean again
#
# While hidden, `git status` lists every record as deleted and staged: commit nothing until
# restore. hide refuses when anything under runs/ is staged already (restore resets runs/ in the
# index to HEAD, which would unstage it). Tested on a scratch repository (tests/test_gpu_carry.py);
# the sizes here measured 5.3 MB for the tree with v14's and v8's scripts kept; not yet used for a
# call that got a machine (2026-12-07: every call of the session was refused).
set -eu
cd "$(git rev-parse --show-toplevel)"
EXCLUDE=$(git rev-parse --git-path info/exclude)
MARK='# device-tree.sh hide: the next line is its own, restore removes both'  # gitignore has no trailing comments
case "${1:-}" in
  hide)
    shift
    [ $# -gt 0 ] || { echo "device-tree.sh hide: name the files under runs/ the call needs" >&2; exit 2; }
    grep -qxF "$MARK" "$EXCLUDE" 2>/dev/null && { echo "device-tree.sh: already hidden (restore first)" >&2; exit 1; }
    git diff --cached --quiet -- runs || { echo "device-tree.sh: staged changes under runs/; commit them first" >&2; exit 1; }
    for f in "$@"; do [ -f "$f" ] || { echo "device-tree.sh: no file $f" >&2; exit 2; }; done
    mkdir -p "$(dirname "$EXCLUDE")" && printf '%s\n/runs/\n' "$MARK" >> "$EXCLUDE"
    git rm -r -q --cached runs
    git add -f -- "$@"
    echo "hidden: runs/ but $# file(s); tracked tree now $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes."
    echo "Commit nothing until: bash runs/device-tree.sh restore"
    ;;
  restore)
    git reset -q -- runs
    if [ -f "$EXCLUDE" ]; then  # the mark and the line after it
      awk -v mark="$MARK" '$0 == mark { skip = 1; next } skip { skip = 0; next } { print }' "$EXCLUDE" > "$EXCLUDE.tmp"
      mv "$EXCLUDE.tmp" "$EXCLUDE"
    fi
    echo "restored: $(git ls-files runs | wc -l) files under runs/ tracked"
    ;;
  *) echo "usage: bash runs/device-tree.sh hide PATH... | restore" >&2; exit 2 ;;
esac
