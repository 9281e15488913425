// core/rollup_inl.hpp — fan_out, the one loop that turns fine keys into rows.
#pragma once

#include "core/intern_table.hpp"

namespace tally {

namespace detail {
/// Ids of the entity of type `e` in `key` (entity_id, scope); 0 when absent.
inline void entity_ids(const agg_key& key, entity e, uint32_t& id, uint32_t& scope) noexcept {
  auto at = [&](field f) { return key.ids[static_cast<int>(f)]; };
  scope = 0;
  switch (e) {
    case entity::key: id = at(field::key); break;
    case entity::user: id = at(field::user); break;
    case entity::team: id = at(field::team); break;
    case entity::org: id = at(field::org); break;
    case entity::end_user: id = at(field::end_user); break;
    case entity::team_member:
      // A member row needs both: the user, within the team.
      id = at(field::team) != 0 ? at(field::user) : 0;
      scope = at(field::team);
      break;
    case entity::tag: id = 0; break;  // handled by the caller, one row per tag
  }
}
} // namespace detail

template <class Emit>
void fan_out(const agg_key& key, intern_table& ids, overflow_ids& overflow, Emit&& emit) {
  // Split the tag list once; every rollup with tag rows reuses it.
  uint32_t tag_ids[max_tags];
  size_t tag_count = 0;
  if (uint32_t tags = key.ids[static_cast<int>(field::tags)]; tags != 0) {
    std::string_view list = ids.text(tags);
    size_t start = 0;
    while (start <= list.size() && tag_count < max_tags) {
      size_t comma = list.find(',', start);
      if (comma == std::string_view::npos)
        comma = list.size();
      std::string_view part = list.substr(start, comma - start);
      uint32_t id = ids.intern(part);
      if (id == intern_table::npos)
        id = overflow.intern(part);
      if (id != 0) {
        bool seen = false;  // "a,a" counts the tag once
        for (size_t i = 0; i < tag_count; ++i)
          seen |= tag_ids[i] == id;
        if (!seen)
          tag_ids[tag_count++] = id;
      }
      start = comma + 1;
    }
  }

  const auto& specs = rollup_specs();
  for (size_t r = 0; r < specs.size(); ++r) {
    const rollup_spec& spec = specs[r];
    row_key row{};
    row.rollup = static_cast<uint16_t>(r);
    switch (spec.bucket) {
      case time_bucket::none: row.bucket = 0; break;
      case time_bucket::day: row.bucket = key.minute / 1440; break;
      case time_bucket::minute: row.bucket = key.minute; break;
    }
    for (size_t d = 0; d < spec.dims.size() && d < 4; ++d)
      row.dims[d] = key.ids[static_cast<int>(spec.dims[d])];
    if (spec.entities.empty()) {
      emit(row);
      continue;
    }
    for (entity e : spec.entities) {
      row.entity = static_cast<uint8_t>(e);
      if (e == entity::tag) {
        row.scope = 0;
        for (size_t t = 0; t < tag_count; ++t) {
          row.entity_id = tag_ids[t];
          emit(row);
        }
        continue;
      }
      uint32_t id = 0, scope = 0;
      detail::entity_ids(key, e, id, scope);
      if (id == 0)
        continue;
      row.entity_id = id;
      row.scope = spec.has_scope ? scope : 0;
      emit(row);
    }
  }
}

} // namespace tally
