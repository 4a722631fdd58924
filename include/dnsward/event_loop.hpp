// One thread, one epoll: file descriptors to callbacks, one-shot timers on a timerfd, and
// signals through a signalfd. It knows nothing of DNS.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <unordered_map>

#include "dnsward/clock.hpp"

namespace dnsward {

class EventLoop : public Timers {
 public:
  using FdHandler = std::function<void(uint32_t events)>;
  using TimerId = uint64_t;

  EventLoop();
  ~EventLoop() override;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  /// Watches fd (level-triggered) for events (EPOLLIN/EPOLLOUT); replaces an earlier watch.
  void watch(int fd, uint32_t events, FdHandler h);
  /// Changes the events of a watched fd.
  void modify(int fd, uint32_t events);
  /// Stops watching fd; safe to call from inside any handler.
  void unwatch(int fd);

  /// Runs fn once, after ms milliseconds. Returns an id for cancel().
  TimerId after(uint64_t ms, std::function<void()> fn) override;
  void cancel(TimerId id) override;

  /// Calls fn (in the loop) when signal sig arrives; the signal is blocked for the process.
  void on_signal(int sig, std::function<void()> fn);

  /// Runs until stop(). Throws std::system_error if epoll itself fails.
  void run();
  void stop() { running_ = false; }

  /// Monotonic milliseconds, read once per loop pass.
  uint64_t now_ms() const override { return now_ms_; }
  uint64_t now_ns() const override { return mono_ns(); }
  static uint64_t clock_ms();

 private:
  struct Watch {
    uint32_t generation;
    FdHandler handler;
  };
  void arm_timerfd();
  void run_timers();
  void read_signals();

  int epfd_ = -1, timerfd_ = -1, sigfd_ = -1;
  bool running_ = false;
  uint64_t now_ms_ = 0;
  uint32_t next_generation_ = 1;
  std::unordered_map<int, Watch> watches_;
  std::map<std::pair<uint64_t, TimerId>, std::function<void()>> timers_;  // (deadline, id)
  std::unordered_map<TimerId, uint64_t> timer_deadline_;
  TimerId next_timer_ = 1;
  uint64_t armed_for_ = 0;
  std::unordered_map<int, std::function<void()>> signal_handlers_;
};

}  // namespace dnsward
