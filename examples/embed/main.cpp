// examples/embed — tally embedded in a program: record events, stop, done.
//   embed redis://127.0.0.1:6379 [events]
#include <tally/tally.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  tally::config cfg;
  cfg.ns = "embed";
  cfg.redis_urls = {argc > 1 ? argv[1] : "redis://127.0.0.1:6379"};
  long events = argc > 2 ? std::stol(argv[2]) : 1000;
  tally::runtime rt;
  if (auto err = rt.start(cfg); !err.empty())
    return std::fprintf(stderr, "embed: %s\n", err.c_str()), 1;
  tally::event ev;
  ev.id(tally::field::key) = "demo-key";
  ev.id(tally::field::model) = "gpt-4o";
  ev.spend = 420'000;  // nano-units: 0.00042
  ev.prompt_tokens = 120;
  for (long i = 0; i < events; ++i)
    while (rt.record(ev).code == tally::errc::backpressure) {}
  rt.stop();
  auto s = rt.snapshot();
  std::printf("embed: %llu events accepted, %llu batches written\n",
              static_cast<unsigned long long>(s.events_accepted), static_cast<unsigned long long>(s.batches_written));
  return s.events_accepted == static_cast<unsigned long long>(events) && s.pending_batches == 0 ? 0 : 1;
}
