# The lines that open and close the stack block (-v begin_prefix, end_line), shared by
# block.awk and compose.awk (each runs with this file in front of it). A BEGIN line is
# begin_prefix alone, or followed by ":" or a blank and any words (they may change
# between versions); an END line is end_line. Leading and trailing blanks do not count.
# POSIX awk only; no single quote in this file.
function is_begin(line,   t) {
  t = line
  sub(/^[ \t]+/, "", t)
  sub(/[ \t\r]+$/, "", t)
  return t == begin_prefix || index(t, begin_prefix ":") == 1 || index(t, begin_prefix " ") == 1
}
function is_end(line,   t) {
  t = line
  sub(/^[ \t]+/, "", t)
  sub(/[ \t\r]+$/, "", t)
  return t == end_line
}
# A BEGIN line without its END: stop (exit 3), nothing printed is usable.
function unterminated() {
  printf "mailgate: %s: mailgate block has no line \"%s\" after its BEGIN line; put it back where the block ends\n", file_name, end_line > "/dev/stderr"
  exit 3
}
