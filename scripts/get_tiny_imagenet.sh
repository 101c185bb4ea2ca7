#!/usr/bin/env bash
# Get Tiny ImageNet-200 (Stanford CS231n) into DEST (default data/tiny-imagenet-200), in its native
# layout, for pretraining backbones (configs/pretrain/). Sources, in this order:
#   1. a local zip:           TINY_IMAGENET_ZIP=/path/tiny-imagenet-200.zip scripts/get_tiny_imagenet.sh
#   2. the official zip:      http://cs231n.stanford.edu/tiny-imagenet-200.zip (when online)
#   3. a git snapshot:        TINY_IMAGENET_GIT=<url or local git dir>, default the public repository
#                             https://github.com/rangeetpan/IMagenet (it holds tiny-imagenet-200/)
# The result is checked (200 classes, 500 train images and a box file each, 50 val images
# each with their annotations) and its file list hashed into DEST/MANIFEST.sha256. Images are never committed:
# data/ is in .gitignore. Research use only (the images come from ImageNet).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-data/tiny-imagenet-200}
URL=${TINY_IMAGENET_URL:-http://cs231n.stanford.edu/tiny-imagenet-200.zip}
GIT=${TINY_IMAGENET_GIT:-https://github.com/rangeetpan/IMagenet.git}

check() {  # the layout the loader reads (N classes, 500 train images + a box file each, 50 val each)
  local d=$1
  [ -f "$d/wnids.txt" ] || { echo "$d/wnids.txt missing" >&2; return 1; }
  local n=200
  [ "$(grep -c . "$d/wnids.txt")" = 200 ] || { echo "$d/wnids.txt: not 200 classes" >&2; return 1; }
  local train; train=$(find "$d/train" -name '*.JPEG' | wc -l)
  [ "$train" = $((500 * n)) ] || { echo "$d/train: $train images, expected $((500 * n))" >&2; return 1; }
  local boxes; boxes=$(find "$d/train" -name '*_boxes.txt' | wc -l)
  [ "$boxes" = "$n" ] || { echo "$d/train: $boxes box files, expected $n" >&2; return 1; }
  local val; val=$(find "$d/val/images" -name '*.JPEG' | wc -l)
  [ "$val" = $((50 * n)) ] || { echo "$d/val/images: $val images, expected $((50 * n))" >&2; return 1; }
  [ -f "$d/val/val_annotations.txt" ] || { echo "$d/val/val_annotations.txt missing" >&2; return 1; }
}

if check "$DEST" 2>/dev/null; then
  echo "$DEST: already complete"; exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tin.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
got=""
if [ -n "${TINY_IMAGENET_ZIP:-}" ]; then
  [ -f "$TINY_IMAGENET_ZIP" ] || { echo "TINY_IMAGENET_ZIP=$TINY_IMAGENET_ZIP: no such file" >&2; exit 2; }
  echo "unpacking $TINY_IMAGENET_ZIP"
  python3 -m zipfile -e "$TINY_IMAGENET_ZIP" "$tmp" && got=zip
elif command -v curl >/dev/null && curl -fsSL --connect-timeout 15 -o "$tmp/tin.zip" "$URL" 2>/dev/null; then
  echo "downloaded $URL"
  python3 -m zipfile -e "$tmp/tin.zip" "$tmp" && rm "$tmp/tin.zip" && got=official
else
  echo "official zip not reachable; using the git snapshot $GIT"
  if git --git-dir="$GIT" rev-parse --verify -q HEAD >/dev/null 2>&1; then   # a local (bare) git dir
    git --git-dir="$GIT" archive HEAD tiny-imagenet-200 | tar -x -C "$tmp"
  else
    git clone -q --depth 1 "$GIT" "$tmp/repo" && mv "$tmp/repo/tiny-imagenet-200" "$tmp/"
  fi
  got="git:$GIT@$( (git --git-dir="$GIT" rev-parse HEAD 2>/dev/null) || echo clone)"
fi
src="$tmp/tiny-imagenet-200"
find "$src" -name .DS_Store -delete
# The rangeetpan/IMagenet snapshot appends two classes to the official 200 (n02480855 gorilla and
# n10148035 groom, the last two lines of its wnids.txt) with images but no box file: not Tiny
# ImageNet-200, so they are dropped (wnids.txt, train/ and their val lines).
for w in $(cat "$src/wnids.txt"); do
  if [ ! -f "$src/train/$w/${w}_boxes.txt" ]; then
    echo "dropping $w: no train/$w/${w}_boxes.txt (not one of the official 200 classes)"
    rm -rf "${src:?}/train/$w"
    for f in $(awk -v w="$w" '$2 == w {print $1}' "$src/val/val_annotations.txt"); do rm -f "$src/val/images/$f"; done
    awk -v w="$w" '$2 != w' "$src/val/val_annotations.txt" > "$tmp/ann" && mv "$tmp/ann" "$src/val/val_annotations.txt"
    grep -vx "$w" "$src/wnids.txt" > "$tmp/wnids" && mv "$tmp/wnids" "$src/wnids.txt"
  fi
done
check "$src"
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST"
mv "$src" "$DEST"
(cd "$DEST" && find . -type f ! -name MANIFEST.sha256 | LC_ALL=C sort | xargs sha256sum > MANIFEST.sha256)
echo "source: $got" > "$DEST/SOURCE"
echo "$DEST: Tiny ImageNet-200 ready (source $got; manifest hash $(sha256sum "$DEST/MANIFEST.sha256" | cut -c1-16))"
