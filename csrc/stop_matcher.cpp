#include "stop_matcher.h"

#include <algorithm>

namespace tg {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
    for (auto& s : stops)
        if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopMatcher::push(const std::string& piece, bool* hit) {
    std::string text = held_ + piece;
    held_.clear();
    size_t cut = std::string::npos;
    for (const auto& s : stops_) cut = std::min(cut, text.find(s));
    if (cut != std::string::npos) {
        *hit = true;
        text.resize(cut);
        return text;
    }
    *hit = false;
    size_t keep = 0;  // the longest suffix of text that is a proper prefix of a stop string
    for (const auto& s : stops_)
        for (size_t k = std::min(s.size() - 1, text.size()); k > keep; k--)
            if (text.compare(text.size() - k, k, s, 0, k) == 0) {
                keep = k;
                break;
            }
    held_ = text.substr(text.size() - keep);
    text.resize(text.size() - keep);
    return text;
}

std::string StopMatcher::flush() {
    std::string out;
    out.swap(held_);
    return out;
}

}  // namespace tg
