#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include "errors.h"
#include "fp16.h"

namespace tg {

// Hard caps (as ggml's): no string or array may claim more than this, whatever the file size.
static const uint64_t MAX_STRING_BYTES = 1ull << 30;
static const uint64_t MAX_ARRAY_ELEMS = 1ull << 30;
static const uint64_t MAX_TENSOR_NAME = 63;  // ggml: GGML_MAX_NAME (64) including the terminator

const char* gguf_type_name(GGUFValueType t) {
    static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                  "string", "array", "u64", "i64", "f64"};
    uint32_t i = (uint32_t)t;
    return i < 13 ? names[i] : "invalid";
}

static size_t scalar_size(GGUFValueType t) {
    switch (t) {
        case GGUFValueType::U8: case GGUFValueType::I8: case GGUFValueType::BOOL: return 1;
        case GGUFValueType::U16: case GGUFValueType::I16: return 2;
        case GGUFValueType::U32: case GGUFValueType::I32: case GGUFValueType::F32: return 4;
        case GGUFValueType::U64: case GGUFValueType::I64: case GGUFValueType::F64: return 8;
        default: return 0;
    }
}

// Printable form of bytes that may be garbage (no over-read, no control characters).
static std::string printable(const uint8_t* p, size_t n) {
    std::string s;
    for (size_t i = 0; i < n; i++) s += (p[i] >= 32 && p[i] < 127) ? (char)p[i] : '?';
    return s;
}

// Tensor names are text: well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF)
// without control characters.
static bool is_clean_utf8(const std::string& s) {
    const unsigned char* p = (const unsigned char*)s.data();
    size_t n = s.size(), i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x20 || c == 0x7f) return false;
        if (c < 0x80) { i++; continue; }
        int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
        if (len == 0 || c > 0xf4 || i + len > n) return false;
        uint32_t cp = c & (0x7f >> len);
        for (int k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

std::string GGUFTensor::shape_str() const {
    std::string s = "[";
    for (uint32_t i = 0; i < n_dims; i++) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

namespace {

// Bounds-checked cursor over the mapping. Every read is checked against the bytes that remain.
struct Cursor {
    const uint8_t* base;
    uint64_t size, pos = 0;

    uint64_t remain() const { return size - pos; }
    void need(uint64_t n, const std::string& what) {
        if (n > remain())
            throw GGUFError(fmt("file truncated: %s needs %llu bytes at offset %llu, only %llu remain",
                                what.c_str(), (unsigned long long)n, (unsigned long long)pos,
                                (unsigned long long)remain()));
    }
    template <typename T>
    T read(const std::string& what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base + pos, sizeof(T));
        pos += sizeof(T);
        return v;
    }
    std::string read_str(const std::string& what) {
        uint64_t n = read<uint64_t>(what + " length");
        if (n > MAX_STRING_BYTES)
            throw GGUFError(fmt("%s: string length %llu exceeds the limit of %llu bytes", what.c_str(),
                                (unsigned long long)n, (unsigned long long)MAX_STRING_BYTES));
        need(n, what);
        std::string s((const char*)base + pos, (size_t)n);
        pos += n;
        return s;
    }
};

int64_t as_int(const GGUFValue& v, bool* ok) {
    *ok = true;
    switch (v.type) {
        case GGUFValueType::U8: case GGUFValueType::U16: case GGUFValueType::U32: case GGUFValueType::U64:
            if (v.u > (uint64_t)std::numeric_limits<int64_t>::max()) { *ok = false; return 0; }
            return (int64_t)v.u;
        case GGUFValueType::I8: case GGUFValueType::I16: case GGUFValueType::I32: case GGUFValueType::I64:
            return v.i;
        default: *ok = false; return 0;
    }
}

}  // namespace

static void read_scalar(Cursor& c, GGUFValueType t, GGUFValue& v, const std::string& what) {
    v.type = t;
    switch (t) {
        case GGUFValueType::U8: v.u = c.read<uint8_t>(what); break;
        case GGUFValueType::I8: v.i = c.read<int8_t>(what); break;
        case GGUFValueType::U16: v.u = c.read<uint16_t>(what); break;
        case GGUFValueType::I16: v.i = c.read<int16_t>(what); break;
        case GGUFValueType::U32: v.u = c.read<uint32_t>(what); break;
        case GGUFValueType::I32: v.i = c.read<int32_t>(what); break;
        case GGUFValueType::U64: v.u = c.read<uint64_t>(what); break;
        case GGUFValueType::I64: v.i = c.read<int64_t>(what); break;
        case GGUFValueType::F32: v.f = c.read<float>(what); break;
        case GGUFValueType::F64: v.f = c.read<double>(what); break;
        case GGUFValueType::BOOL: {
            uint8_t b = c.read<uint8_t>(what);
            if (b > 1) throw GGUFError(fmt("%s: bool value %u is neither 0 nor 1", what.c_str(), (unsigned)b));
            v.u = b;
            break;
        }
        case GGUFValueType::STRING: v.s = c.read_str(what); break;
        default: throw GGUFError(fmt("%s: invalid value type %u", what.c_str(), (unsigned)t));
    }
}

GGUFFile::GGUFFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw GGUFError(fmt("cannot open '%s': %s", path.c_str(), std::strerror(errno)));
    struct stat st;
    if (fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd_);
        throw GGUFError(fmt("'%s' is not a regular file", path.c_str()));
    }
    size_ = (uint64_t)st.st_size;
    if (size_ < 24) {
        ::close(fd_);
        throw GGUFError(fmt("'%s' is too small to be a GGUF file (%llu bytes, the header alone is 24)",
                            path.c_str(), (unsigned long long)size_));
    }
    void* p = mmap(nullptr, (size_t)size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
        ::close(fd_);
        throw GGUFError(fmt("cannot map '%s': %s", path.c_str(), std::strerror(errno)));
    }
    base_ = (const uint8_t*)p;
    try {
        parse();
    } catch (...) {
        munmap((void*)base_, (size_t)size_);
        ::close(fd_);
        throw;
    }
}

GGUFFile::~GGUFFile() {
    if (base_) munmap((void*)base_, (size_t)size_);
    if (fd_ >= 0) ::close(fd_);
}

void GGUFFile::parse() {
    Cursor c{base_, size_};
    if (std::memcmp(base_, "GGUF", 4) != 0)
        throw GGUFError(fmt("bad magic '%s' (expected 'GGUF'): not a GGUF file", printable(base_, 4).c_str()));
    c.pos = 4;
    version_ = c.read<uint32_t>("version");
    if (version_ != 3) {
        if (version_ != 0 && (version_ & 0xFFFF) == 0)
            throw GGUFError(fmt("version field 0x%08x looks byte-swapped: big-endian GGUF files are not supported", version_));
        throw GGUFError(fmt("unsupported GGUF version %u (only version 3 is supported)", version_));
    }
    uint64_t n_tensors = c.read<uint64_t>("tensor_count");
    uint64_t n_kv = c.read<uint64_t>("metadata_kv_count");
    // Each KV needs at least 8 (key length) + 1 (key) + 4 (type) + 1 bytes; each tensor info at least
    // 8 + 1 + 4 + 8 + 4 + 8 bytes. Bound both counts by what the file could hold before any allocation.
    if (n_kv > c.remain() / 14)
        throw GGUFError(fmt("metadata_kv_count %llu cannot fit in a file of %llu bytes",
                            (unsigned long long)n_kv, (unsigned long long)size_));
    if (n_tensors > c.remain() / 33)
        throw GGUFError(fmt("tensor_count %llu cannot fit in a file of %llu bytes",
                            (unsigned long long)n_tensors, (unsigned long long)size_));

    kvs_.reserve((size_t)n_kv);
    for (uint64_t k = 0; k < n_kv; k++) {
        std::string where = fmt("metadata entry %llu", (unsigned long long)k);
        std::string key = c.read_str(where + " key");
        if (key.empty()) throw GGUFError(where + ": empty key");
        if (key.size() > 65535) throw GGUFError(fmt("%s: key of %zu bytes exceeds 65535", where.c_str(), key.size()));
        if (kv_index_.count(key)) throw GGUFError(fmt("duplicate metadata key '%s'", printable((const uint8_t*)key.data(), key.size()).c_str()));
        std::string what = "metadata '" + printable((const uint8_t*)key.data(), std::min<size_t>(key.size(), 200)) + "'";
        uint32_t t = c.read<uint32_t>(what + " type");
        if (t > 12) throw GGUFError(fmt("%s: invalid value type %u", what.c_str(), t));
        GGUFValue v;
        if ((GGUFValueType)t == GGUFValueType::ARRAY) {
            v.type = GGUFValueType::ARRAY;
            uint32_t et = c.read<uint32_t>(what + " array type");
            if (et > 12) throw GGUFError(fmt("%s: invalid array element type %u", what.c_str(), et));
            if ((GGUFValueType)et == GGUFValueType::ARRAY)
                throw GGUFError(what + ": arrays of arrays are not supported");
            v.elem_type = (GGUFValueType)et;
            uint64_t n = c.read<uint64_t>(what + " array length");
            if (n > MAX_ARRAY_ELEMS)
                throw GGUFError(fmt("%s: array length %llu exceeds the limit of %llu", what.c_str(),
                                    (unsigned long long)n, (unsigned long long)MAX_ARRAY_ELEMS));
            v.n = n;
            if (v.elem_type == GGUFValueType::STRING) {
                if (n > c.remain() / 8)
                    throw GGUFError(fmt("%s: %llu strings cannot fit in the %llu bytes that remain", what.c_str(),
                                        (unsigned long long)n, (unsigned long long)c.remain()));
                v.strs.reserve((size_t)n);
                for (uint64_t j = 0; j < n; j++) v.strs.push_back(c.read_str(what));
            } else {
                size_t es = scalar_size(v.elem_type);
                if (n > c.remain() / es)
                    throw GGUFError(fmt("%s: array of %llu %s needs %llu bytes, only %llu remain", what.c_str(),
                                        (unsigned long long)n, gguf_type_name(v.elem_type),
                                        (unsigned long long)(n * es), (unsigned long long)c.remain()));
                v.nums.reserve((size_t)n);
                bool is_int = v.elem_type != GGUFValueType::F32 && v.elem_type != GGUFValueType::F64 &&
                              v.elem_type != GGUFValueType::BOOL;
                if (is_int) v.ints.reserve((size_t)n);
                for (uint64_t j = 0; j < n; j++) {
                    GGUFValue e;
                    read_scalar(c, v.elem_type, e, what);
                    bool ok;
                    if (v.elem_type == GGUFValueType::F32 || v.elem_type == GGUFValueType::F64) {
                        v.nums.push_back(e.f);
                    } else if (v.elem_type == GGUFValueType::BOOL) {
                        v.nums.push_back((double)e.u);
                    } else if (v.elem_type == GGUFValueType::U64) {
                        v.ints.push_back((int64_t)e.u);  // bit pattern: exact for the whole u64 range
                        v.nums.push_back((double)e.u);
                    } else {
                        int64_t x = as_int(e, &ok);
                        v.ints.push_back(x);
                        v.nums.push_back((double)x);
                    }
                }
            }
        } else {
            read_scalar(c, (GGUFValueType)t, v, what);
        }
        kv_index_[key] = kvs_.size();
        kvs_.emplace_back(std::move(key), std::move(v));
    }

    if (const GGUFValue* a = find("general.alignment")) {
        if (a->type != GGUFValueType::U32)
            throw GGUFError(fmt("general.alignment has type %s, expected u32", gguf_type_name(a->type)));
        if (a->u == 0 || (a->u & (a->u - 1)) != 0 || a->u > (1u << 20))
            throw GGUFError(fmt("general.alignment %llu is not a power of two in [1, 2^20]", (unsigned long long)a->u));
        alignment_ = (uint32_t)a->u;
    }

    tensors_.reserve((size_t)n_tensors);
    for (uint64_t ti = 0; ti < n_tensors; ti++) {
        GGUFTensor t;
        std::string where = fmt("tensor info %llu", (unsigned long long)ti);
        t.name = c.read_str(where + " name");
        if (t.name.empty()) throw GGUFError(where + ": empty tensor name");
        std::string pname = printable((const uint8_t*)t.name.data(), std::min<size_t>(t.name.size(), 80));
        if (t.name.size() > MAX_TENSOR_NAME)
            throw GGUFError(fmt("%s: tensor name '%s...' is %zu bytes long (limit %llu)", where.c_str(), pname.c_str(),
                                t.name.size(), (unsigned long long)MAX_TENSOR_NAME));
        if (!is_clean_utf8(t.name))
            throw GGUFError(fmt("%s: tensor name '%s' is not UTF-8 text (invalid bytes or control characters)",
                                where.c_str(), pname.c_str()));
        if (tensor_index_.count(t.name)) throw GGUFError(fmt("duplicate tensor name '%s'", pname.c_str()));
        std::string what = "tensor '" + pname + "'";
        t.n_dims = c.read<uint32_t>(what + " n_dims");
        if (t.n_dims < 1 || t.n_dims > 4) throw GGUFError(fmt("%s: n_dims %u is not in [1, 4]", what.c_str(), t.n_dims));
        uint64_t nel = 1;
        for (uint32_t d = 0; d < t.n_dims; d++) {
            uint64_t ne = c.read<uint64_t>(what + " shape");
            if (ne == 0 || ne > (uint64_t)std::numeric_limits<int64_t>::max())
                throw GGUFError(fmt("%s: dimension %u has invalid size %llu", what.c_str(), d, (unsigned long long)ne));
            if (nel > (uint64_t)std::numeric_limits<int64_t>::max() / ne)
                throw GGUFError(fmt("%s: element count of shape overflows (dimension %u = %llu)", what.c_str(), d,
                                    (unsigned long long)ne));
            nel *= ne;
            t.ne[d] = (int64_t)ne;
        }
        uint32_t type = c.read<uint32_t>(what + " type");
        TypeTraits tt = type_traits(type);
        if (!tt.name) throw GGUFError(fmt("%s: unknown tensor type id %u", what.c_str(), type));
        t.type = (GgmlType)type;
        if (t.ne[0] % tt.block != 0)
            throw GGUFError(fmt("%s: row length %lld is not a multiple of the %s block size %lld", what.c_str(),
                                (long long)t.ne[0], tt.name, (long long)tt.block));
        uint64_t blocks = nel / (uint64_t)tt.block;
        if (blocks > std::numeric_limits<uint64_t>::max() / tt.block_bytes)
            throw GGUFError(fmt("%s: byte size overflows", what.c_str()));
        t.nbytes = blocks * tt.block_bytes;
        if (t.nbytes > size_)
            throw GGUFError(fmt("%s: needs %llu bytes, more than the whole file (%llu)", what.c_str(),
                                (unsigned long long)t.nbytes, (unsigned long long)size_));
        t.offset = c.read<uint64_t>(what + " offset");
        tensor_index_[t.name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }

    // Data section: starts at the next multiple of the alignment; tensors lie back to back, each
    // starting at the running padded size (no gaps, no overlap, no reordering).
    uint64_t data_start = (c.pos + alignment_ - 1) / alignment_ * alignment_;
    if (data_start > size_ && n_tensors > 0)
        throw GGUFError(fmt("data section would start at %llu, past the end of the file (%llu bytes)",
                            (unsigned long long)data_start, (unsigned long long)size_));
    uint64_t expect = 0;
    for (auto& t : tensors_) {
        if (t.offset != expect)
            throw GGUFError(fmt("tensor '%s' has data offset %llu, expected %llu (tensors must be contiguous and aligned to %u)",
                                printable((const uint8_t*)t.name.data(), t.name.size()).c_str(),
                                (unsigned long long)t.offset, (unsigned long long)expect, alignment_));
        uint64_t padded = (t.nbytes + alignment_ - 1) / alignment_ * alignment_;
        if (padded < t.nbytes || expect > std::numeric_limits<uint64_t>::max() - padded)
            throw GGUFError(fmt("tensor '%s': data size accumulator overflows", t.name.c_str()));
        if (data_start + t.offset > size_ || t.nbytes > size_ - (data_start + t.offset))
            throw GGUFError(fmt("tensor '%s' data [%llu, %llu) lies outside the file (%llu bytes): file truncated?",
                                t.name.c_str(), (unsigned long long)(data_start + t.offset),
                                (unsigned long long)(data_start + t.offset + t.nbytes), (unsigned long long)size_));
        t.data = base_ + data_start + t.offset;
        expect += padded;
    }
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kvs_[it->second].second;
}

const GGUFTensor* GGUFFile::find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

static void bad_value(const GGUFTensor& t, uint64_t index, float x, const char* what) {
    throw GGUFError(fmt("tensor '%s' (%s, shape %s): %s at element %llu is %s", t.name.c_str(), type_name(t.type),
                        t.shape_str().c_str(), what, (unsigned long long)index, std::isnan(x) ? "NaN" : (x > 0 ? "+Inf" : "-Inf")));
}

void GGUFFile::validate() const {
    for (const GGUFTensor& t : tensors_) {
        const uint64_t n = (uint64_t)t.nelements();
        switch (t.type) {
            case GgmlType::F32: {
                for (uint64_t i = 0; i < n; i++) {
                    float x;
                    std::memcpy(&x, t.data + 4 * i, 4);
                    if (!std::isfinite(x)) bad_value(t, i, x, "value");
                }
                break;
            }
            case GgmlType::F16: case GgmlType::BF16: {
                for (uint64_t i = 0; i < n; i++) {
                    uint16_t h;
                    std::memcpy(&h, t.data + 2 * i, 2);
                    // Exponent all ones is Inf/NaN in both formats (5 bits in F16, 8 in BF16).
                    bool bad = t.type == GgmlType::F16 ? (h & 0x7c00) == 0x7c00 : (h & 0x7f80) == 0x7f80;
                    if (bad) bad_value(t, i, t.type == GgmlType::F16 ? fp16_to_fp32(h) : bf16_to_fp32(h), "value");
                }
                break;
            }
            case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0:
            case GgmlType::IQ4_NL: {
                // Every block starts with its fp16 scale d; Q4_1/Q5_1 follow it with the fp16 minimum m.
                const TypeTraits tt = type_traits((uint32_t)t.type);
                const bool has_min = t.type == GgmlType::Q4_1 || t.type == GgmlType::Q5_1;
                const uint64_t nb = n / (uint64_t)tt.block;
                for (uint64_t b = 0; b < nb; b++) {
                    const uint8_t* blk = t.data + b * tt.block_bytes;
                    for (int k = 0; k < (has_min ? 2 : 1); k++) {
                        uint16_t h;
                        std::memcpy(&h, blk + 2 * k, 2);
                        if ((h & 0x7c00) == 0x7c00)
                            bad_value(t, b * (uint64_t)tt.block, fp16_to_fp32(h), k ? "block minimum m" : "block scale d");
                    }
                }
                break;
            }
            case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K:
            case GgmlType::IQ4_XS: {
                // fp16 super-block scale d (and the scale of the mins, dmin, for Q2_K/Q4_K/Q5_K): first in
                // Q4_K/Q5_K/IQ4_XS, last in Q3_K/Q6_K, d then dmin last in Q2_K
                const TypeTraits tt = type_traits((uint32_t)t.type);
                const bool has_min = t.type == GgmlType::Q2_K || t.type == GgmlType::Q4_K || t.type == GgmlType::Q5_K;
                const size_t off = t.type == GgmlType::Q4_K || t.type == GgmlType::Q5_K || t.type == GgmlType::IQ4_XS ? 0
                                   : tt.block_bytes - (has_min ? 4 : 2);
                const uint64_t nb = n / (uint64_t)tt.block;
                for (uint64_t b = 0; b < nb; b++) {
                    const uint8_t* blk = t.data + b * tt.block_bytes;
                    for (int k = 0; k < (has_min ? 2 : 1); k++) {
                        uint16_t h;
                        std::memcpy(&h, blk + off + 2 * (size_t)k, 2);
                        if ((h & 0x7c00) == 0x7c00)
                            bad_value(t, b * (uint64_t)tt.block, fp16_to_fp32(h), k ? "super-block scale dmin" : "super-block scale d");
                    }
                }
                break;
            }
            default: break;  // integer tensors and the other block formats are not checked
        }
    }
}

static const GGUFValue& require(const GGUFFile& f, const std::string& key) {
    const GGUFValue* v = f.find(key);
    if (!v) throw GGUFError(fmt("required metadata key '%s' is missing", key.c_str()));
    return *v;
}

static uint32_t to_u32(const std::string& key, const GGUFValue& v) {
    bool ok;
    int64_t x = as_int(v, &ok);
    if (!ok) throw GGUFError(fmt("metadata '%s' has type %s, expected an integer", key.c_str(), gguf_type_name(v.type)));
    if (x < 0 || x > (int64_t)std::numeric_limits<uint32_t>::max())
        throw GGUFError(fmt("metadata '%s' = %lld is out of range for u32", key.c_str(), (long long)x));
    return (uint32_t)x;
}

uint32_t GGUFFile::get_u32(const std::string& key) const { return to_u32(key, require(*this, key)); }
uint32_t GGUFFile::get_u32_or(const std::string& key, uint32_t def) const {
    const GGUFValue* v = find(key);
    return v ? to_u32(key, *v) : def;
}
int32_t GGUFFile::get_i32_or(const std::string& key, int32_t def) const {
    const GGUFValue* v = find(key);
    if (!v) return def;
    bool ok;
    int64_t x = as_int(*v, &ok);
    if (!ok) throw GGUFError(fmt("metadata '%s' has type %s, expected an integer", key.c_str(), gguf_type_name(v->type)));
    if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max())
        throw GGUFError(fmt("metadata '%s' = %lld is out of range for i32", key.c_str(), (long long)x));
    return (int32_t)x;
}

static float to_f32(const std::string& key, const GGUFValue& v) {
    if (v.type == GGUFValueType::F32 || v.type == GGUFValueType::F64) return (float)v.f;
    throw GGUFError(fmt("metadata '%s' has type %s, expected a float", key.c_str(), gguf_type_name(v.type)));
}
float GGUFFile::get_f32(const std::string& key) const { return to_f32(key, require(*this, key)); }
float GGUFFile::get_f32_or(const std::string& key, float def) const {
    const GGUFValue* v = find(key);
    return v ? to_f32(key, *v) : def;
}
bool GGUFFile::get_bool_or(const std::string& key, bool def) const {
    const GGUFValue* v = find(key);
    if (!v) return def;
    if (v->type != GGUFValueType::BOOL)
        throw GGUFError(fmt("metadata '%s' has type %s, expected bool", key.c_str(), gguf_type_name(v->type)));
    return v->u != 0;
}
std::string GGUFFile::get_str(const std::string& key) const {
    const GGUFValue& v = require(*this, key);
    if (v.type != GGUFValueType::STRING)
        throw GGUFError(fmt("metadata '%s' has type %s, expected string", key.c_str(), gguf_type_name(v.type)));
    return v.s;
}
std::string GGUFFile::get_str_or(const std::string& key, const std::string& def) const {
    return has(key) ? get_str(key) : def;
}
std::vector<std::string> GGUFFile::get_str_arr(const std::string& key) const {
    const GGUFValue& v = require(*this, key);
    if (v.type != GGUFValueType::ARRAY || v.elem_type != GGUFValueType::STRING)
        throw GGUFError(fmt("metadata '%s' is not an array of strings", key.c_str()));
    return v.strs;
}
std::vector<float> GGUFFile::get_f32_arr(const std::string& key) const {
    const GGUFValue& v = require(*this, key);
    if (v.type != GGUFValueType::ARRAY || v.elem_type == GGUFValueType::STRING)
        throw GGUFError(fmt("metadata '%s' is not a numeric array", key.c_str()));
    return std::vector<float>(v.nums.begin(), v.nums.end());
}
std::vector<int32_t> GGUFFile::get_i32_arr(const std::string& key) const {
    const GGUFValue& v = require(*this, key);
    if (v.type != GGUFValueType::ARRAY || v.ints.size() != v.n)
        throw GGUFError(fmt("metadata '%s' is not an integer array", key.c_str()));
    std::vector<int32_t> out;
    out.reserve(v.ints.size());
    for (int64_t x : v.ints) {
        if (v.elem_type == GGUFValueType::U64 && x < 0)
            throw GGUFError(fmt("metadata '%s' element %llu is out of range for i32", key.c_str(), (unsigned long long)x));
        if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max())
            throw GGUFError(fmt("metadata '%s' element %lld is out of range for i32", key.c_str(), (long long)x));
        out.push_back((int32_t)x);
    }
    return out;
}

}  // namespace tg
