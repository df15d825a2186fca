// Log lines of the core. By default nothing is printed: the Python package installs a callback that
// hands each line to the `tinygptv_native` logger, and sets the threshold from the logger's level.
//   TG_LOG(LogLevel::Info, "loaded %zu tensors in %.0f ms", n, ms);
// Lines below the threshold are not even formatted. The callback may be called from any thread.
#pragma once
#include <string>

namespace tg {

// Values match Python's logging levels.
enum class LogLevel : int { Debug = 10, Info = 20, Warning = 30, Error = 40 };

using LogCallback = void (*)(int level, const std::string& message);

void set_log_callback(LogCallback cb);  // nullptr: drop every line
void set_log_threshold(int level);      // lines with level < threshold are dropped (default Warning)
int log_threshold();
bool log_enabled(LogLevel level);
void log_message(LogLevel level, const std::string& message);
void log_printf(LogLevel level, const char* format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

}  // namespace tg

#define TG_LOG(level, ...)                                          \
    do {                                                            \
        if (::tg::log_enabled(level)) ::tg::log_printf(level, __VA_ARGS__); \
    } while (0)
