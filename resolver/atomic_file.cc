#include "dnsward/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace dnsward {

bool write_file_atomically(const std::string& path, const std::string& text, std::string& err) {
  const std::string tmp = path + ".tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    err = fmt::format("{}: {}", tmp, std::strerror(errno));
    return false;
  }
  std::size_t off = 0;
  while (off < text.size()) {
    const ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = fmt::format("{}: {}", tmp, std::strerror(errno));
      close(fd);
      unlink(tmp.c_str());
      return false;
    }
    off += std::size_t(n);
  }
  if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    err = fmt::format("{}: {}", path, std::strerror(errno));
    unlink(tmp.c_str());
    return false;
  }
  // The rename is durable only once its directory is: without this, a power cut after an
  // acknowledged write (a `ctl add` replied to) could leave the old file, or none.
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd) != 0) {
    err = fmt::format("{}: {}", dir, std::strerror(errno));
    if (dfd >= 0) close(dfd);
    return false;
  }
  close(dfd);
  return true;
}

ReadFile read_file(const std::string& path, std::string& text, std::string& err,
                   std::size_t max_bytes) {
  text.clear();
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return ReadFile::Missing;
    err = fmt::format("{}: cannot open: {}", path, std::strerror(errno));
    return ReadFile::Error;
  }
  char buf[65536];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = fmt::format("{}: {}", path, std::strerror(errno));
      close(fd);
      return ReadFile::Error;
    }
    if (n == 0) break;
    if (text.size() + std::size_t(n) > max_bytes) {
      err = fmt::format("{}: larger than {} bytes", path, max_bytes);
      close(fd);
      return ReadFile::Error;
    }
    text.append(buf, std::size_t(n));
  }
  close(fd);
  return ReadFile::Ok;
}

}  // namespace dnsward
