#include "log.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <vector>

namespace tg {

static std::atomic<LogCallback> g_callback{nullptr};
static std::atomic<int> g_threshold{(int)LogLevel::Warning};

void set_log_callback(LogCallback cb) { g_callback.store(cb); }
void set_log_threshold(int level) { g_threshold.store(level); }
int log_threshold() { return g_threshold.load(); }

bool log_enabled(LogLevel level) {
    return g_callback.load(std::memory_order_relaxed) != nullptr &&
           (int)level >= g_threshold.load(std::memory_order_relaxed);
}

void log_message(LogLevel level, const std::string& message) {
    LogCallback cb = g_callback.load();
    if (cb && (int)level >= g_threshold.load()) cb((int)level, message);
}

void log_printf(LogLevel level, const char* format, ...) {
    if (!log_enabled(level)) return;
    va_list ap;
    va_start(ap, format);
    va_list ap2;
    va_copy(ap2, ap);
    int n = std::vsnprintf(nullptr, 0, format, ap);
    va_end(ap);
    std::string s(n > 0 ? (size_t)n : 0, '\0');
    if (n > 0) std::vsnprintf(&s[0], (size_t)n + 1, format, ap2);
    va_end(ap2);
    log_message(level, s);
}

}  // namespace tg
