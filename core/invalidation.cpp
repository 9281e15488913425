// core/invalidation.cpp — see invalidation.hpp.
#include "core/invalidation.hpp"

#include <charconv>

namespace tally {

namespace {

constexpr std::string_view magic = "tally-inv/1";

std::vector<std::string_view> split(std::string_view line, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t at = line.find(sep, start);
    out.push_back(line.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
    if (at == std::string_view::npos)
      return out;
    start = at + 1;
  }
}

bool parse_u64(std::string_view s, uint64_t& out) {
  if (s.empty())
    return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

} // namespace

std::string encode_invalidation(const invalidation_message& m) {
  std::string s;
  s.reserve(64 + 40 * m.batch_ids.size() + 48 * m.entities.size());
  s += magic;
  s += '\t';
  s += m.leader;
  s += '\t';
  s += std::to_string(m.epoch);
  s += '\t';
  s += std::to_string(m.seq);
  s += m.all ? "\t1" : "\t0";
  for (const auto& id : m.batch_ids) {
    s += "\nb\t";
    s += id;
  }
  if (!m.all) {
    for (const auto& e : m.entities) {
      s += "\ne\t";
      s += e.type;
      s += '\t';
      s += e.scope;
      s += '\t';
      s += e.id;
    }
  }
  return s;
}

bool decode_invalidation(std::string_view text, invalidation_message& out, std::string& why) {
  out = invalidation_message{};
  auto lines = split(text, '\n');
  auto head = split(lines[0], '\t');
  if (head.size() != 5 || head[0] != magic) {
    why = "not a tally invalidation (header)";
    return false;
  }
  out.leader = std::string(head[1]);
  if (!parse_u64(head[2], out.epoch) || !parse_u64(head[3], out.seq) || (head[4] != "0" && head[4] != "1")) {
    why = "bad epoch, sequence or flag in the header";
    return false;
  }
  out.all = head[4] == "1";
  for (size_t i = 1; i < lines.size(); ++i) {
    auto f = split(lines[i], '\t');
    if (f[0] == "b" && f.size() == 2 && !f[1].empty()) {
      out.batch_ids.emplace_back(f[1]);
    } else if (f[0] == "e" && f.size() == 4 && !f[1].empty() && !f[3].empty()) {
      out.entities.push_back({std::string(f[1]), std::string(f[2]), std::string(f[3])});
    } else {
      why = "bad record on line " + std::to_string(i + 1);
      return false;
    }
  }
  return true;
}

} // namespace tally
