#!/usr/bin/env bash
# Data for the GPU machine in parts small enough to travel. A device call takes 64 MiB with the tracked
# tree (51 MB by 2026-12-07, most of it runs/ records), so a data folder larger than ~12 MB goes in
# parts (a gzip -1 tar: the Imagenette subset, 43.6 MB of files, is 4 parts), one per call, on the same
# warm machine, calls back to back (it is given back after 30 s idle):
#   here, once:      bash runs/carry.sh split SRC_DIR NAME      # .gpu/carry-NAME-1 ... -N, 12 MB each
#   call k (1..N-1): carry [".gpu/carry-NAME-k"], command `bash runs/carry.sh stash NAME`
#   call N:          carry [".gpu/carry-NAME-N"], command `bash runs/carry.sh join NAME DEST && ...`
# stash copies the part to /tmp/carry/NAME (a carried folder is gone at the next call, /tmp stays:
# runs/fm-data.sh, 2026-12-07); join adds the last part, checks that all N arrived (their count and
# sha256 travel in every part) and unpacks SRC_DIR's contents into DEST. Fashion-MNIST has its own
# two-part form in runs/fm-data.sh.
set -eu
cmd=$1; name=$2
store=${CARRY_STORE:-/tmp/carry}/$name
case $cmd in
  split)
    src=$2; name=$3; rm -rf .gpu/carry-"$name"-* .gpu/.carry-"$name"; mkdir -p .gpu/.carry-"$name"
    tar cf - -C "$src" . | gzip -1 | split -b "${CARRY_PART_BYTES:-12000000}" -d -a 2 - .gpu/.carry-"$name"/part-
    (cd .gpu/.carry-"$name" && sha256sum part-* > manifest)
    k=0; for part in .gpu/.carry-"$name"/part-*; do
      k=$((k + 1)); mkdir -p .gpu/carry-"$name"-$k && cp "$part" .gpu/.carry-"$name"/manifest .gpu/carry-"$name"-$k/
    done
    rm -rf .gpu/.carry-"$name"; du -sb .gpu/carry-"$name"-*;;
  stash|join)
    mkdir -p "$store" && for d in .gpu/carry-"$name"-*; do [ -d "$d" ] && cp "$d"/* "$store"/; done
    ls -l "$store"
    if [ "$cmd" = join ]; then
      dest=$3; (cd "$store" && sha256sum -c --quiet manifest) || { echo "carry.sh: parts of $name missing or" \
        "damaged in $store (each call carries one part, back to back on one warm machine)" >&2; exit 2; }
      mkdir -p "$dest" && cat "$store"/part-* | gunzip | tar xf - -C "$dest" && echo "carry.sh: $name unpacked into $dest"
    fi;;
  *) echo "usage: carry.sh split SRC_DIR NAME | stash NAME | join NAME DEST" >&2; exit 2;;
esac
