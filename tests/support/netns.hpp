// tests/support/netns.hpp — a network namespace joined to the host by veth
// links that a test can cut, for partitions that hang connections.
//
// A refused connection fails fast; a partition answers nothing. A process
// run inside() the namespace reaches Redis through one link and Postgres
// through another (both servers on the host, listening on the links'
// host-side addresses: redis_options::bind "0.0.0.0", postgres_options
// listen "*" with trust_cidr "10.0.0.0/8"). Cutting a link sets its host
// side down: the namespace keeps its route (its side is only NO-CARRIER),
// so its packets go nowhere and nothing answers. Needs root and iproute2;
// without them the constructor throws (a test fails, it does not skip).
#pragma once

#include <string>
#include <vector>

namespace tally::testing {

class netns_host {
public:
  /// Creates the namespace; `index` (1..100) tells apart several in one test.
  explicit netns_host(int index);
  ~netns_host();  // deletes the links and the namespace
  netns_host(const netns_host&) = delete;
  netns_host& operator=(const netns_host&) = delete;

  /// Returns the host-side address this namespace reaches Redis / Postgres at.
  std::string redis_address() const { return links_[0].prefix + "1"; }
  std::string postgres_address() const { return links_[1].prefix + "1"; }

  void cut_redis();
  void heal_redis();
  void cut_postgres();
  void heal_postgres();

  /// Returns `argv` wrapped to run inside the namespace.
  std::vector<std::string> inside(std::vector<std::string> argv) const;

  const std::string& name() const noexcept { return name_; }

private:
  struct link {
    std::string name;
    std::string prefix;  // "10.1xx.yy."
    std::string host_side() const { return name + "h"; }
    std::string ns_side() const { return name + "n"; }
  };
  std::string name_;
  link links_[2];
  bool created_ = false;
};

} // namespace tally::testing
