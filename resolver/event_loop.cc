#include "dnsward/event_loop.hpp"

#include "dnsward/clock.hpp"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <system_error>

namespace dnsward {
namespace {
constexpr int kTimerTag = -1, kSignalTag = -2;  // fds are never negative
[[noreturn]] void fail(const char* what) { throw std::system_error(errno, std::generic_category(), what); }
}  // namespace

uint64_t EventLoop::clock_ms() { return mono_ms(); }

EventLoop::EventLoop() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) fail("epoll_create1");
  timerfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timerfd_ < 0) fail("timerfd_create");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = uint64_t(uint32_t(kTimerTag));
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, timerfd_, &ev) < 0) fail("epoll_ctl timerfd");
  now_ms_ = clock_ms();
}

EventLoop::~EventLoop() {
  if (sigfd_ >= 0) close(sigfd_);
  if (timerfd_ >= 0) close(timerfd_);
  if (epfd_ >= 0) close(epfd_);
}

void EventLoop::watch(int fd, uint32_t events, FdHandler h) {
  // The generation in the event data lets run() ignore an event that was queued for an fd
  // number which a handler in the same batch closed and reused.
  const uint32_t gen = next_generation_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = uint64_t(gen) << 32 | uint32_t(fd);
  const bool known = watches_.count(fd) != 0;
  if (epoll_ctl(epfd_, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) < 0) {
    // A known number may be a new file whose predecessor was closed without unwatch():
    // epoll forgot it on close, so add it afresh.
    if (!(known && errno == ENOENT && epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0))
      fail("epoll_ctl watch");
  }
  watches_[fd] = Watch{gen, std::move(h)};
}

void EventLoop::modify(int fd, uint32_t events) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = uint64_t(it->second.generation) << 32 | uint32_t(fd);
  if (epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) < 0) fail("epoll_ctl modify");
}

void EventLoop::unwatch(int fd) {
  if (watches_.erase(fd)) epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
}

EventLoop::TimerId EventLoop::after(uint64_t ms, std::function<void()> fn) {
  const TimerId id = next_timer_++;
  const uint64_t deadline = clock_ms() + ms;
  timers_.emplace(std::make_pair(deadline, id), std::move(fn));
  timer_deadline_[id] = deadline;
  arm_timerfd();
  return id;
}

void EventLoop::cancel(TimerId id) {
  auto it = timer_deadline_.find(id);
  if (it == timer_deadline_.end()) return;
  timers_.erase({it->second, id});
  timer_deadline_.erase(it);
}

void EventLoop::arm_timerfd() {
  const uint64_t next = timers_.empty() ? 0 : timers_.begin()->first.first;
  if (next == armed_for_) return;
  armed_for_ = next;
  itimerspec its{};
  if (next) {  // absolute time on the monotonic clock; 0 would disarm
    its.it_value.tv_sec = time_t(next / 1000);
    its.it_value.tv_nsec = long(next % 1000) * 1000000L;
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
  }
  timerfd_settime(timerfd_, TFD_TIMER_ABSTIME, &its, nullptr);
}

void EventLoop::run_timers() {
  uint64_t expirations;
  while (read(timerfd_, &expirations, sizeof expirations) > 0) {
  }
  armed_for_ = 0;
  now_ms_ = clock_ms();
  while (!timers_.empty() && timers_.begin()->first.first <= now_ms_) {
    auto node = timers_.extract(timers_.begin());
    timer_deadline_.erase(node.key().second);
    node.mapped()();
  }
  arm_timerfd();
}

void EventLoop::on_signal(int sig, std::function<void()> fn) {
  signal_handlers_[sig] = std::move(fn);
  sigset_t set;
  sigemptyset(&set);
  for (const auto& [s, _] : signal_handlers_) sigaddset(&set, s);
  if (sigprocmask(SIG_BLOCK, &set, nullptr) < 0) fail("sigprocmask");
  const bool fresh = sigfd_ < 0;
  sigfd_ = signalfd(sigfd_, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sigfd_ < 0) fail("signalfd");
  if (fresh) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = uint64_t(uint32_t(kSignalTag));
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, sigfd_, &ev) < 0) fail("epoll_ctl signalfd");
  }
}

void EventLoop::read_signals() {
  signalfd_siginfo si;
  while (read(sigfd_, &si, sizeof si) == ssize_t(sizeof si)) {
    auto it = signal_handlers_.find(int(si.ssi_signo));
    if (it != signal_handlers_.end()) it->second();
  }
}

void EventLoop::run() {
  running_ = true;
  epoll_event events[64];
  while (running_) {
    const int n = epoll_wait(epfd_, events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("epoll_wait");
    }
    now_ms_ = clock_ms();
    for (int i = 0; i < n; ++i) {
      const int fd = int(uint32_t(events[i].data.u64));
      const uint32_t gen = uint32_t(events[i].data.u64 >> 32);
      if (fd == kTimerTag) { run_timers(); continue; }
      if (fd == kSignalTag) { read_signals(); continue; }
      auto it = watches_.find(fd);
      if (it == watches_.end() || it->second.generation != gen) continue;
      FdHandler h = it->second.handler;  // the handler may unwatch (and destroy) itself
      h(events[i].events);
    }
  }
}

}  // namespace dnsward
