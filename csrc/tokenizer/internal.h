// Constructors of the concrete tokenizers (bpe.cpp, spm.cpp); only tokenizer.cpp calls them.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace tg {

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const VocabData& vocab);  // model "gpt2"
std::unique_ptr<Tokenizer> make_spm_tokenizer(const VocabData& vocab);  // model "llama"

// Longest token string accepted; real vocabularies stay far below.
constexpr size_t kMaxTokenBytes = 1 << 16;

// Byte trie mapping strings to token ids, for longest-match and common-prefix searches.
struct ByteTrie {
    struct Node {
        std::map<uint8_t, int32_t> next;
        int32_t id = -1;
    };
    std::vector<Node> nodes{1};  // nodes[0] is the root

    void insert(const std::string& s, int32_t id) {
        int32_t cur = 0;
        for (unsigned char c : s) {
            auto it = nodes[cur].next.find(c);
            if (it == nodes[cur].next.end()) {
                nodes.emplace_back();
                const int32_t child = (int32_t)nodes.size() - 1;
                nodes[cur].next[c] = child;
                cur = child;
            } else {
                cur = it->second;
            }
        }
        nodes[cur].id = id;
    }
    // Calls f(id, length) for every stored string that is a prefix of s[0..n), shortest first.
    template <typename F>
    void prefixes(const char* s, size_t n, F&& f) const {
        int32_t cur = 0;
        for (size_t k = 0; k < n; ++k) {
            const auto& next = nodes[cur].next;
            auto it = next.find((uint8_t)s[k]);
            if (it == next.end()) return;
            cur = it->second;
            if (nodes[cur].id >= 0) f(nodes[cur].id, k + 1);
        }
    }
};

// encode() refuses text of this many bytes or more: offsets inside are 32-bit.
constexpr size_t kMaxEncodeBytes = (size_t)1 << 31;

}  // namespace tg
