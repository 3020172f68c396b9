# mailgate twin-port mappings in docker-compose.override.yml, read as the host has it.
# FILES: entries fresh live. Prints live with the stack old entries taken out and the
# current ones put in; every other line as it was.
#   entries: one line per mapping, TAB-separated: service, container port, mailcow.conf
#            variable, the list item as it is written (- "${VAR:?...}:PORT")
#   fresh:   the whole block (markers, services:, each service, ports:, items) that is
#            appended when the file has no services: key (or does not exist)
# Where the file has services:, each service gets its own marked block: the items under
# its ports:, or ports: with the items, or the service with ports: and the items,
# indented as the file indents. A mapping of the user for the same container port that
# reads mailgate variable (Mailcow HAPROXY example) publishes it already: mailgate adds
# none. Any other mapping of that port, or a services:, service or ports: written in
# flow style, is refused (exit 4, the reason on stderr, nothing printed is usable).
# Also -v begin_line (written), file_name; markers.awk runs in front of it (exit 3: a
# block without its END line).
# POSIX awk only (mawk on Debian and Ubuntu); no single quote in this file.
function indent(line) { match(line, /^ */); return RLENGTH }
function content(line) { return line !~ /^[ \t]*(#.*)?$/ }
function spaces(width,   s) { s = ""; while (width-- > 0) s = s " "; return s }
function bare_key(line, key,   t) {
  t = line
  sub(/^ */, "", t)
  if (index(t, key ":") != 1) return -1
  t = substr(t, length(key) + 2)
  return t ~ /^[ \t]*(#.*)?$/ ? 1 : 0
}
function refuse(message) {
  printf "mailgate: %s: %s\n", file_name, message > "/dev/stderr"
  refused = 1
}
function container_port(item,   value) {
  value = item
  sub(/^ *- */, "", value)
  sub(/[ \t]+#.*$/, "", value)
  gsub(/["\047 \t]/, "", value)
  sub(/\/[a-z]+$/, "", value)
  sub(/^.*:/, "", value)
  return value
}
function marked(width, body) {
  return spaces(width) begin_line "\n" body spaces(width) end_line "\n"
}
FILENAME == ARGV[1] {
  split($0, field, "\t")
  if (!(field[1] in service_index)) { services++; service_name[services] = field[1]; service_index[field[1]] = services }
  entries++
  entry_service[entries] = field[1]; entry_port[entries] = field[2]
  entry_variable[entries] = field[3]; entry_item[entries] = field[4]
  next
}
FILENAME == ARGV[2] { fresh = fresh $0 "\n"; next }
{
  if (inside) { if (is_end($0)) inside = 0; next }
  if (is_begin($0)) { inside = 1; next }
  lines++
  line[lines] = $0
  number[lines] = FNR
}
END {
  if (inside) unterminated()
  top = 0
  for (i = 1; i <= lines; i++) if (index(line[i], "services:") == 1) { top = i; break }
  if (top) {
    if (bare_key(line[top], "services") != 1) refuse("line " number[top] ": services: must be a block mapping (one service per line) for mailgate to add its ports")
    last = lines
    for (i = top + 1; i <= lines; i++) if (content(line[i]) && indent(line[i]) == 0) { last = i - 1; break }
    child = 2
    for (i = top + 1; i <= last; i++) if (content(line[i])) { child = indent(line[i]); break }
    for (s = 1; s <= services; s++) {
      name = service_name[s]
      key_at[s] = 0
      for (i = top + 1; i <= last; i++) {
        if (content(line[i]) && indent(line[i]) == child && bare_key(line[i], name) >= 0) { key_at[s] = i; break }
      }
      if (!key_at[s]) continue
      if (bare_key(line[key_at[s]], name) != 1) { refuse("line " number[key_at[s]] ": " name ": must be a block mapping (one key per line) for mailgate to add its ports"); continue }
      end_of_service = last
      for (i = key_at[s] + 1; i <= last; i++) if (content(line[i]) && indent(line[i]) <= child) { end_of_service = i - 1; break }
      inner[s] = child + 2
      for (i = key_at[s] + 1; i <= end_of_service; i++) if (content(line[i])) { inner[s] = indent(line[i]); break }
      ports_at[s] = 0
      for (i = key_at[s] + 1; i <= end_of_service; i++) {
        if (content(line[i]) && indent(line[i]) == inner[s] && bare_key(line[i], "ports") >= 0) { ports_at[s] = i; break }
      }
      if (!ports_at[s]) continue
      if (bare_key(line[ports_at[s]], "ports") != 1) { refuse("line " number[ports_at[s]] ": the ports of " name " must be a block list (one mapping per line) for mailgate to add its own"); continue }
      item_indent[s] = inner[s] + 2
      first = 1
      for (i = ports_at[s] + 1; i <= end_of_service; i++) {
        if (!content(line[i])) continue
        item = line[i]
        sub(/^ */, "", item)
        if (indent(line[i]) < inner[s] || (indent(line[i]) == inner[s] && substr(item, 1, 1) != "-")) break
        if (substr(item, 1, 1) != "-") continue
        if (first) { item_indent[s] = indent(line[i]); first = 0 }
        port = container_port(line[i])
        for (e = 1; e <= entries; e++) {
          if (entry_service[e] != name || entry_port[e] != port) continue
          if (index(item, "${" entry_variable[e] ":") || index(item, "${" entry_variable[e] "}")) { covered[e] = 1; continue }
          refuse("line " number[i] " publishes port " port " of " name " (" item "), which mailgate publishes on the tailnet address: delete that line, or let it read ${" entry_variable[e] "} as Mailcow HAPROXY example does")
        }
      }
    }
  }
  if (refused) exit 4
  for (s = 1; s <= services; s++) {
    name = service_name[s]
    items = ""
    width = !top ? 0 : !key_at[s] ? child + 4 : !ports_at[s] ? inner[s] + 2 : item_indent[s]
    for (e = 1; e <= entries; e++) if (entry_service[e] == name && !covered[e]) items = items spaces(width) entry_item[e] "\n"
    if (items == "" || !top) continue
    if (!key_at[s]) after[top] = after[top] marked(child, spaces(child) name ":\n" spaces(child + 2) "ports:\n" items)
    else if (!ports_at[s]) after[key_at[s]] = after[key_at[s]] marked(inner[s], spaces(inner[s]) "ports:\n" items)
    else after[ports_at[s]] = after[ports_at[s]] marked(item_indent[s], items)
  }
  for (i = 1; i <= lines; i++) printf "%s\n%s", line[i], after[i]
  if (!top) printf "%s", fresh
}
