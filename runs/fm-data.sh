# Sourced by the Fashion-MNIST GPU run scripts, from the repository root: puts the four original .gz
# files into $DATA (.gpu/fashion-mnist) on the device machine, from whatever the call carried:
# - .gpu/fashion-mnist itself (the .gz files, 30 MB), or already there from an earlier call on the
#   same warm machine (an ignored folder the device keeps between calls);
# - .gpu/fm-xz: the same files recompressed with `xz -9e` (26.4 MB), unpacked here;
# - .gpu/fm-carry-1 and .gpu/fm-carry-2: .gpu/fm-xz as a tar split in two (`bash runs/fm-data.sh split`
#   here makes them), carried by two consecutive calls on the same warm machine. A call takes 64 MiB
#   with the tracked tree (51 MB since 2026-12-07's v13 records): 26.4 MB no longer fits, 13 MB does.
#   Call 1 carries .gpu/fm-carry-1 and runs `bash runs/fm-data.sh stash`, which copies its half to
#   /tmp/fm-parts; call 2 carries .gpu/fm-carry-2 and runs the script. Not the carried folder itself:
#   on 2026-12-07 call 2 found .gpu/fm-carry-1 gone (a carried path is not kept for the next call),
#   while /tmp/v13 of one call was there for the next on the same warm machine. The stash is
#   untested on the device as of that day.
DATA=${DATA:-$PWD/.gpu/fashion-mnist}
FM_PARTS=${FM_PARTS:-/tmp/fm-parts}  # where call 1 leaves its half for call 2
if [ "${1:-}" = split ]; then  # here, not on the device: make the two halves from the Debian package
  mkdir -p .gpu/fm-xz .gpu/fm-carry-1 .gpu/fm-carry-2
  for f in /usr/share/datasets/fashion-mnist/*.gz; do
    [ -f ".gpu/fm-xz/$(basename "$f" .gz).xz" ] || zcat "$f" | xz -9e -T2 > ".gpu/fm-xz/$(basename "$f" .gz).xz"
  done
  tar cf .gpu/fm-xz.tar -C .gpu/fm-xz . && split -n 2 .gpu/fm-xz.tar .gpu/fm-split- && rm .gpu/fm-xz.tar
  mv .gpu/fm-split-aa .gpu/fm-carry-1/ && mv .gpu/fm-split-ab .gpu/fm-carry-2/ && du -sb .gpu/fm-carry-*
elif [ "${1:-}" = stash ]; then  # call 1 on the device: keep the first half where call 2 finds it
  mkdir -p $FM_PARTS && cp .gpu/fm-carry-1/fm-split-* $FM_PARTS/ && ls -l $FM_PARTS
elif [ ! -f "$DATA/t10k-labels-idx1-ubyte.gz" ]; then
  [ -d .gpu/fm-carry-1 ] && mkdir -p $FM_PARTS && cp .gpu/fm-carry-1/fm-split-* $FM_PARTS/
  if [ ! -d .gpu/fm-xz ] && [ -f $FM_PARTS/fm-split-aa ] && [ -d .gpu/fm-carry-2 ]; then
    mkdir -p .gpu/fm-xz && cat $FM_PARTS/fm-split-aa .gpu/fm-carry-2/fm-split-* | tar xf - -C .gpu/fm-xz
  fi
  if [ -d .gpu/fm-xz ]; then
    mkdir -p "$DATA" && for f in .gpu/fm-xz/*.xz; do xz -dc "$f" | gzip -1 > "$DATA/$(basename "$f" .xz).gz"; done
  fi
  [ -f "$DATA/t10k-labels-idx1-ubyte.gz" ] || { echo "fm-data.sh: no Fashion-MNIST in $DATA: carry .gpu/fm-xz," \
    "or .gpu/fm-carry-1 with 'stash' in one call and .gpu/fm-carry-2 in the next (runs/fm-data.sh)" >&2; false; }
fi
