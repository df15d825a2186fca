// Stop strings over streamed text: holds back the tail that could still become a stop string.
//
// Text pieces are whole UTF-8 characters (StreamDecoder's output); matching bytes is then matching
// characters (a stop string's first byte is a lead byte, so a match starts and ends on character
// boundaries). The emitted text never contains a stop string: on a match everything from it on is
// dropped.
#pragma once
#include <string>
#include <vector>

namespace tg {

class StopMatcher {
public:
    StopMatcher() = default;
    explicit StopMatcher(std::vector<std::string> stops);

    // Appends a piece; returns the text now safe to show. *hit is set when a stop string appeared.
    std::string push(const std::string& piece, bool* hit);
    std::string flush();  // the held-back tail (no stop string came)

private:
    std::vector<std::string> stops_;
    std::string held_;
};

}  // namespace tg
