# mailgate block in a key = value file (mailcow.conf, extra.cf, extra.conf), read as the
# host has it. -v mode=:
#   splice   FILES: block live  -> live with the stack block replaced where it stands,
#            or appended at the end; every other line as it was
#   regions  FILES: live        -> the stack block(s), marker lines included
#   remove   FILES: live        -> live without the stack block(s)
#   later    FILES: live        -> "line N: TEXT" for each line after the block that sets
#            one of -v keys (space-separated): it would win over the block value
# Also -v file_name for messages; markers.awk runs in front of it (exit 3: a block
# without its END line).
# POSIX awk only (mawk on Debian and Ubuntu); no single quote in this file.
function sets(line, key,   t) {
  t = line
  sub(/^[ \t]+/, "", t)
  if (index(t, key) != 1) return 0
  t = substr(t, length(key) + 1)
  sub(/^[ \t]+/, "", t)
  return substr(t, 1, 1) == "="
}
BEGIN { key_count = split(keys, key_list, " ") }
mode == "splice" && FILENAME == ARGV[1] { block = block $0 "\n"; next }
{
  if (inside) {
    if (mode == "regions") print
    if (is_end($0)) { inside = 0; last_end = FNR }
    next
  }
  if (is_begin($0)) {
    inside = 1
    found++
    if (mode == "regions") print
    if (mode == "splice" && found == 1) printf "%s", block
    next
  }
  if (mode == "splice" || mode == "remove") print
  if (mode == "later") text[FNR] = $0
}
END {
  if (inside) unterminated()
  if (mode == "splice" && !found) printf "%s", block
  if (mode == "later") {
    for (n = last_end + 1; n <= FNR; n++) {
      if (!(n in text)) continue
      for (k = 1; k <= key_count; k++) if (sets(text[n], key_list[k])) { print "line " n ": " text[n]; break }
    }
  }
}
