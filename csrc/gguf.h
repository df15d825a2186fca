// GGUF v3 reader: memory-maps the file read-only, validates every count, length, type, shape and
// offset before use, and exposes tensors as zero-copy views into the mapping.
// Any problem throws tg::GGUFError with the field and the offending value in the message.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ggml_type.h"

namespace tg {

enum class GGUFValueType : uint32_t {
    U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
    U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GGUFValueType t);

struct GGUFValue {
    GGUFValueType type = GGUFValueType::U8;
    GGUFValueType elem_type = GGUFValueType::U8;  // arrays only
    // Scalars: integers in i (signed view) or u (unsigned view), floats in f, bools in u (0/1).
    int64_t i = 0;
    uint64_t u = 0;
    double f = 0.0;
    std::string s;                   // STRING
    std::vector<std::string> strs;   // ARRAY of STRING
    std::vector<double> nums;        // ARRAY of any numeric/bool type (values converted exactly for <= 32-bit)
    std::vector<int64_t> ints;       // ARRAY of integer types (exact values)
    uint64_t n = 0;                  // ARRAY length
};

struct GGUFTensor {
    std::string name;
    GgmlType type = GgmlType::F32;
    uint32_t n_dims = 0;
    int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the contiguous dimension (row length)
    uint64_t offset = 0;           // relative to the data section
    uint64_t nbytes = 0;
    const uint8_t* data = nullptr; // view into the mapping
    int64_t nelements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
    std::string shape_str() const;
};

class GGUFFile {
public:
    explicit GGUFFile(const std::string& path);
    ~GGUFFile();
    GGUFFile(const GGUFFile&) = delete;
    GGUFFile& operator=(const GGUFFile&) = delete;

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    uint64_t file_size() const { return size_; }
    uint32_t alignment() const { return alignment_; }

    // Metadata, in file order.
    const std::vector<std::pair<std::string, GGUFValue>>& kvs() const { return kvs_; }
    bool has(const std::string& key) const { return kv_index_.count(key) != 0; }
    const GGUFValue* find(const std::string& key) const;

    // Typed getters: throw GGUFError naming the key when it is missing or of the wrong type, or the
    // value does not fit. The *_or variants return `def` when the key is absent (but still reject a
    // present key of the wrong type).
    uint32_t get_u32(const std::string& key) const;
    uint32_t get_u32_or(const std::string& key, uint32_t def) const;
    int32_t get_i32_or(const std::string& key, int32_t def) const;
    float get_f32(const std::string& key) const;
    float get_f32_or(const std::string& key, float def) const;
    bool get_bool_or(const std::string& key, bool def) const;
    std::string get_str(const std::string& key) const;
    std::string get_str_or(const std::string& key, const std::string& def) const;
    std::vector<std::string> get_str_arr(const std::string& key) const;
    std::vector<float> get_f32_arr(const std::string& key) const;
    std::vector<int32_t> get_i32_arr(const std::string& key) const;

    const std::vector<GGUFTensor>& tensors() const { return tensors_; }
    const GGUFTensor* find_tensor(const std::string& name) const;

    // Optional data check (never run at load, it reads every page): NaN/Inf in F32/F16/BF16 tensors
    // and in the fp16 block scales of Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tensors. Throws GGUFError naming the
    // first offending tensor, the element index (the block's first element for a scale) and the value.
    void validate() const;

private:
    void parse();

    std::string path_;
    int fd_ = -1;
    const uint8_t* base_ = nullptr;
    uint64_t size_ = 0;
    uint32_t version_ = 0;
    uint32_t alignment_ = 32;
    std::vector<std::pair<std::string, GGUFValue>> kvs_;
    std::map<std::string, size_t> kv_index_;
    std::vector<GGUFTensor> tensors_;
    std::map<std::string, size_t> tensor_index_;
};

}  // namespace tg
