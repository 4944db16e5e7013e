/* The CPU backend's compiled kernels: the primitives where a loop beats NumPy's formulation
 * several times over. Called through ctypes from cpu_kernels.py (the join step's two through this
 * module's own functions, at the end), which allocates every output
 * and checks shapes; each function on rows has an xp twin in sets.py / hisa.py / dense.py that
 * CuPy runs and the property tests compare against (the text ones, symbols' and fact files', run
 * on the host only: their tests compare them with Python's dict and sort). Rows are C-contiguous (n, w) uint64 words compared
 * lexicographically. Loops whose iterations write disjoint outputs run on OpenMP's threads
 * (OMP_NUM_THREADS; a Dask worker per core gets its share). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

/* Below this many iterations a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768
/* Parts a kernel splits its rows into at most, one per thread (dense_novel, rows_not_in_runs). */
#define PARTS_MAX 64
/* Runs merge_many and rows_not_in_runs take at once (a head or cursor per run on the stack). */
#define RUNS_MAX 64
#define HASH_MULT 0x9E3779B97F4A7C15ULL

/* Set in a forked child of a process whose threads ran a kernel (after_fork): libgomp's thread
 * pool does not survive fork, and a child's first parallel region waits for the parent's
 * threads, which it does not have. A parent that never started them (the resident process,
 * which only imports) leaves its children all their threads. */
static int serial_only = 0;
static int team_started = 0;

/* Python's at-fork hook, in the child: every kernel on the calling thread from now on if the
 * parent's OpenMP threads (or, ``helper``, the split sort's thread) ever ran; returns whether. */
int after_fork(int helper) {
    serial_only = serial_only || team_started || helper;
    return serial_only;
}

/* The OpenMP threads a kernel may use (OMP_NUM_THREADS: a Dask worker's share of the cores). */
int64_t kernel_threads(void) {
#ifdef _OPENMP
    return serial_only ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

/* Whether a loop over n rows runs on the OpenMP threads (noted: a fork must know). */
static inline int parallel(int64_t n) {
    int yes = n > PARALLEL_MIN && !serial_only;
    team_started |= yes;
    return yes;
}

/* The parts a kernel splits n rows into, one per thread: one below PARALLEL_MIN rows. */
static inline int64_t parts_for(int64_t n) {
    int64_t parts = n > PARALLEL_MIN ? kernel_threads() : 1;
    team_started |= parts > 1;
    return parts < PARTS_MAX ? parts : PARTS_MAX;
}

static inline int row_less(const uint64_t *a, int64_t i, const uint64_t *b, int64_t j, int64_t w) {
    for (int64_t k = 0; k < w; k++) {
        uint64_t x = a[i * w + k], y = b[j * w + k];
        if (x != y) return x < y;
    }
    return 0;
}

static inline int row_equal(const uint64_t *a, int64_t i, const uint64_t *b, int64_t j, int64_t w) {
    return memcmp(a + i * w, b + j * w, (size_t)w * sizeof(uint64_t)) == 0;
}

/* The first row of full at or after position j that is not less than new[i] (full sorted):
 * galloping from j, so a small delta against a large full costs O(n log(m/n)), not O(m). */
static inline int64_t gallop(const uint64_t *full, int64_t m, int64_t j, const uint64_t *new_, int64_t i, int64_t w) {
    int64_t step = 1, hi = j;
    while (hi < m && row_less(full, hi, new_, i, w)) {
        j = hi + 1;
        hi = j + step;
        step *= 2;
    }
    if (hi > m) hi = m;
    int64_t lo = j;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (row_less(full, mid, new_, i, w)) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* out = the rows of new_ (n, sorted) that are rows of none of the k <= RUNS_MAX sorted runs (runs[r] holds
 * lengths[r] rows: a log-structured relation's full, or one run); returns their count. Each
 * row's answer is its own, so parts of new_ are looked up on the OpenMP threads, a cursor per
 * run galloping forward within a part; a part's rows are written from its first row's
 * position and made contiguous after, in new_'s order. */
int64_t rows_not_in_runs(const uint64_t *new_, int64_t n, const uint64_t *const *runs, const int64_t *lengths,
                         int64_t k, int64_t w, uint64_t *out) {
    int64_t parts = parts_for(n), ends[PARTS_MAX];
#pragma omp parallel for schedule(static, 1) num_threads((int)parts) if (parts > 1)
    for (int64_t p = 0; p < parts; p++) {
        int64_t cursor[RUNS_MAX] = {0}, kept = n * p / parts;
        for (int64_t i = n * p / parts; i < n * (p + 1) / parts; i++) {
            int found = 0;
            for (int64_t r = 0; r < k && !found; r++) {
                cursor[r] = gallop(runs[r], lengths[r], cursor[r], new_, i, w);
                found = cursor[r] < lengths[r] && row_equal(runs[r], cursor[r], new_, i, w);
            }
            if (!found) memcpy(out + (kept++) * w, new_ + i * w, (size_t)w * 8);
        }
        ends[p] = kept;
    }
    int64_t total = 0;
    for (int64_t p = 0; p < parts; p++) {
        int64_t start = n * p / parts;
        memmove(out + total * w, out + start * w, (size_t)(ends[p] - start) * w * 8);
        total += ends[p] - start;
    }
    return total;
}

/* Words a block of partition_below classifies at once. */
#define PARTITION_BLOCK 128

/* Moves the words of a[0 .. n) below pivot to the front, in place; returns how many: the split
 * of a sort into two halves sorted side by side. Block partitioning (Edelkamp and Weiss,
 * BlockQuicksort): a block at each end is classified without branches into the offsets of its
 * misplaced words, which are then swapped pairwise, so random words cost no mispredicted
 * branch (a branching Hoare partition took 74 ms for 16 M words, as long as sorting half). */
int64_t partition_below(uint64_t *a, int64_t n, uint64_t pivot) {
    int64_t l = 0, r = n; /* a[0 .. l) < pivot <= a[r .. n); blocks in progress lie in [l, r) */
    uint8_t left[PARTITION_BLOCK], right[PARTITION_BLOCK];
    int64_t nl = 0, nr = 0, sl = 0, sr = 0; /* misplaced words left in each block, the first of them */
    while (r - l > 2 * PARTITION_BLOCK) {
        if (nl == 0) {
            sl = 0;
            for (int i = 0; i < PARTITION_BLOCK; i++) {
                left[nl] = (uint8_t)i;
                nl += a[l + i] >= pivot;
            }
        }
        if (nr == 0) {
            sr = 0;
            for (int i = 0; i < PARTITION_BLOCK; i++) {
                right[nr] = (uint8_t)i;
                nr += a[r - 1 - i] < pivot;
            }
        }
        int64_t pairs = nl < nr ? nl : nr;
        for (int64_t k = 0; k < pairs; k++) {
            uint64_t *x = a + l + left[sl + k], *y = a + r - 1 - right[sr + k], t = *x;
            *x = *y;
            *y = t;
        }
        nl -= pairs;
        nr -= pairs;
        sl += pairs;
        sr += pairs;
        if (nl == 0) l += PARTITION_BLOCK;
        if (nr == 0) r -= PARTITION_BLOCK;
    }
    r--; /* the rest, at most two blocks (one half done), by Hoare's loop */
    for (;;) {
        while (l <= r && a[l] < pivot) l++;
        while (l <= r && a[r] >= pivot) r--;
        if (l >= r) return l;
        uint64_t t = a[l];
        a[l++] = a[r];
        a[r--] = t;
    }
}

/* Keeps the first of each stretch of equal words of sorted words[0 .. n) at the front; returns
 * how many: deduplicating a sort's output where it lies, in one pass. */
int64_t distinct_sorted(uint64_t *words, int64_t n) {
    int64_t kept = n > 0;
    for (int64_t i = 1; i < n; i++)
        if (words[i] != words[kept - 1]) words[kept++] = words[i];
    return kept;
}

/* The first position lo <= hi such that no row of a[lo .. hi) is less than b[i] (a sorted):
 * galloping down from hi, the mirror of gallop, for merging from the back. */
static inline int64_t gallop_down(const uint64_t *a, int64_t hi, const uint64_t *b, int64_t i, int64_t w) {
    int64_t step = 1, top = hi, probe = hi - 1; /* a[top .. hi) is not less than b[i] */
    while (probe >= 0 && !row_less(a, probe, b, i, w)) {
        top = probe;
        probe = top - step;
        step *= 2;
    }
    int64_t lo = probe < 0 ? 0 : probe + 1; /* a[probe] < b[i]: the answer is in [lo, top] */
    while (lo < top) {
        int64_t mid = lo + (top - lo) / 2;
        if (row_less(a, mid, b, i, w)) lo = mid + 1;
        else top = mid;
    }
    return lo;
}

/* out = the union of two sorted, disjoint row sets in one pass, copied a block at a time: each
 * side's stretch below the other's next row is found by galloping, so a delta of m rows merged
 * into a run of n costs O(m log(n/m)) comparisons and one memcpy per stretch, not per row. */
void merge_sorted(const uint64_t *full, int64_t n, const uint64_t *new_, int64_t m, int64_t w, uint64_t *out) {
    int64_t i = 0, j = 0, k = 0;
    while (j < m) {
        int64_t until = gallop(full, n, i, new_, j, w); /* full[i .. until) < new_[j] */
        memcpy(out + k * w, full + i * w, (size_t)(until - i) * w * 8);
        k += until - i;
        i = until;
        until = i < n ? gallop(new_, m, j + 1, full, i, w) : m; /* new_[j .. until) < full[i] */
        memcpy(out + k * w, new_ + j * w, (size_t)(until - j) * w * 8);
        k += until - j;
        j = until;
    }
    memcpy(out + k * w, full + i * w, (size_t)(n - i) * w * 8);
}

/* HyperLogLog's buckets: 2^HLL_BITS one-byte registers, a relative error of about 1%. */
#define HLL_BITS 14

/* A HyperLogLog sketch of the distinct values of column a (b < 0), or of the pairs of columns
 * a and b, of n packed rows (halves: n rows of stride uint32 halves), added into registers
 * (2^HLL_BITS bytes): each bucket keeps the longest run of leading zero bits seen after it. A
 * join order needs the fan-out's order of magnitude, not the exact count a sort gives. */
void distinct_sketch(const uint32_t *halves, int64_t n, int64_t stride, int64_t a, int64_t b, uint8_t *registers) {
    for (int64_t i = 0; i < n; i++) {
        uint64_t x = ((uint64_t)halves[i * stride + a] << 32 | (b >= 0 ? halves[i * stride + b] : 0)) + HASH_MULT;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL; /* splitmix64's finaliser: every bit of the key moves every bit */
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
        x ^= x >> 31;
        uint8_t rank = (uint8_t)(__builtin_clzll(x << HLL_BITS | 1ULL << (HLL_BITS - 1)) + 1);
        uint8_t *r = registers + (x >> (64 - HLL_BITS));
        if (rank > *r) *r = rank;
    }
}

/* Before a block of nbytes at data is grown by realloc: NumPy advises a fresh array of 4 MiB or
 * more into transparent huge pages from the first page boundary past its data pointer, which
 * splits glibc's mapping of the block in two (its first page unadvised), and mremap moves one
 * mapping only: realloc then fell back to malloc, a copy of the whole run and free, every page
 * faulted again (seen: mremap failing with EFAULT, twice the page faults of copying merges).
 * Advising the whole block makes its mapping one again; a grown block keeps the advice. */
void unsplit_mapping(const void *data, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)data & ~(page - 1), end = ((uintptr_t)data + (uintptr_t)nbytes + page - 1) & ~(page - 1);
    madvise((void *)start, end - start, MADV_HUGEPAGE); /* advice only: a refusal leaves realloc copying, as before */
#else
    (void)data;
    (void)nbytes;
#endif
}

/* buf[0 .. n + m) = the union of the sorted, disjoint rows buf[0 .. n) and new_[0 .. m), merged
 * from the back in place, a stretch at a time (galloping down): buf was grown to n + m rows (by
 * realloc, which moves no page of a large block), so a run takes in a smaller one without a
 * second copy of itself, and its rows above the delta's last are moved by one memmove. */
void merge_into(uint64_t *buf, int64_t n, const uint64_t *new_, int64_t m, int64_t w) {
    int64_t i = n, j = m, k = n + m; /* buf[0 .. i) and new_[0 .. j) are still to place below k */
    while (j > 0) {
        int64_t from = gallop_down(buf, i, new_, j - 1, w); /* buf[from .. i) > new_[j - 1] */
        k -= i - from;
        memmove(buf + k * w, buf + from * w, (size_t)(i - from) * w * 8);
        i = from;
        from = i > 0 ? gallop_down(new_, j - 1, buf, i - 1, w) : 0; /* new_[from .. j) > buf[i - 1] */
        k -= j - from;
        memcpy(buf + k * w, new_ + from * w, (size_t)(j - from) * w * 8);
        j = from;
    }
}

/* out = the union of k sorted, pairwise disjoint row sets (runs[r] holds lengths[r] rows) in one
 * pass: compacting a log-structured relation needs room for its rows once more, not twice. The
 * run with the least head gives its whole stretch below the next least head at once (found by
 * galloping, one memcpy), so a large run among small ones costs O(k) per stretch, not per row. */
void merge_many(const uint64_t *const *runs, const int64_t *lengths, int64_t k, int64_t w, uint64_t *out) {
    int64_t heads[RUNS_MAX] = {0}, o = 0;
    for (;;) {
        int64_t best = -1, next = -1; /* the runs with the least and the second least head */
        for (int64_t r = 0; r < k; r++) {
            if (heads[r] == lengths[r]) continue;
            if (best < 0 || row_less(runs[r], heads[r], runs[best], heads[best], w)) {
                next = best;
                best = r;
            } else if (next < 0 || row_less(runs[r], heads[r], runs[next], heads[next], w)) {
                next = r;
            }
        }
        if (best < 0) return;
        int64_t until = next < 0 ? lengths[best] : gallop(runs[best], lengths[best], heads[best] + 1, runs[next], heads[next], w);
        memcpy(out + o * w, runs[best] + heads[best] * w, (size_t)(until - heads[best]) * w * 8);
        o += until - heads[best];
        heads[best] = until;
    }
}

/* offsets[i] = counts[0] + ... + counts[i - 1]: where outer row i's output starts (a serial
 * scan: cheap beside the gather, and one NumPy call fewer per join). */
static void exclusive_scan(const int64_t *counts, int64_t n, int64_t *offsets) {
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        offsets[i] = total;
        total += counts[i];
    }
}

/* A join's pairs: outer row i with inner rows starts[i] .. starts[i] + counts[i], written from
 * offsets[i] (the exclusive scan of counts, made here in the caller's scratch). */
void expand_runs(const int64_t *starts, const int64_t *counts, int64_t *offsets, int64_t n,
                 int64_t *outer, int64_t *inner) {
    exclusive_scan(counts, n, offsets);
#pragma omp parallel for schedule(static) if (parallel(n))
    for (int64_t i = 0; i < n; i++) {
        int64_t s = starts[i], k = offsets[i];
        for (int64_t c = 0; c < counts[i]; c++) {
            outer[k + c] = i;
            inner[k + c] = s + c;
        }
    }
}

/* Fused join materialisation: for outer row i and each inner row of its run, one output row
 * whose column c is outer[i, spec[c][1]] (spec[c][0] == 0), halves[r, spec[c][1]] (== 1) or 0.
 * Column by column per outer row: the outer value is a fill, the inner run a strided copy. */
void gather_join(const uint32_t *outer, int64_t outer_width, const int64_t *starts, const int64_t *counts,
                 int64_t *offsets, int64_t n, const uint32_t *halves, int64_t halves_width,
                 const int64_t *spec, int64_t width, uint32_t *out) {
    exclusive_scan(counts, n, offsets);
#pragma omp parallel for schedule(static) if (parallel(n))
    for (int64_t i = 0; i < n; i++) {
        int64_t s = starts[i], c = counts[i], k = offsets[i];
        for (int64_t col = 0; col < width; col++) {
            int64_t side = spec[2 * col], src = spec[2 * col + 1];
            uint32_t *o = out + k * width + col;
            if (side == 0) {
                uint32_t v = outer[i * outer_width + src];
                for (int64_t t = 0; t < c; t++) o[t * width] = v;
            } else if (side == 1) {
                const uint32_t *h = halves + s * halves_width + src;
                for (int64_t t = 0; t < c; t++) o[t * width] = h[t * halves_width];
            } else {
                for (int64_t t = 0; t < c; t++) o[t * width] = 0;
            }
        }
    }
}

/* Fibonacci hashing: the product's top log2(capacity) bits, which every bit of the key reaches.
 * Bits 17 and up of the product, as taken before, see a key's high word only from bit 32 on: a
 * two-column key whose second column is constant (crdt's (counter, node) with one node) fell
 * into capacity / 2^15 clusters, and a 100k-key table took seconds to build and probe. */
static inline int64_t hash_slot(uint64_t key, int shift) {
    return (int64_t)((key * HASH_MULT) >> shift);
}

static inline int slot_shift(int64_t capacity) { return 64 - __builtin_ctzll((uint64_t)capacity); }

/* A slot of the open-addressing table: the key with its first row and run length side by side,
 * so a probe reads one cache line (keys, starts and counts apart cost three misses a probe on
 * large tables: 31 against 19 ns a query with a million keys). An empty slot has count 0; rows
 * are indexed in 32 bits (hisa.py takes the sorted directory for a run of 2^32 rows or more). */
typedef struct {
    uint64_t key;
    uint32_t start;
    uint32_t count;
} hash_slot_t;

/* Open addressing, linear probing over the distinct keys; capacity is a power of two above
 * the key count. */
void hash_build(const uint64_t *keys, const int64_t *starts, const int64_t *counts, int64_t n, hash_slot_t *slots,
                int64_t capacity) {
    uint64_t mask = (uint64_t)capacity - 1;
    int shift = slot_shift(capacity);
    memset(slots, 0, (size_t)capacity * sizeof(hash_slot_t));
    for (int64_t i = 0; i < n; i++) {
        int64_t s = hash_slot(keys[i], shift);
        while (slots[s].count) s = (s + 1) & (int64_t)mask;
        slots[s].key = keys[i];
        slots[s].start = (uint32_t)starts[i];
        slots[s].count = (uint32_t)counts[i];
    }
}

/* The join's count pass in one loop: (first row, run length) per query, 0 where absent; returns
 * the run lengths' sum, which the caller needs next (one NumPy reduction fewer per join). */
int64_t hash_ranges(const hash_slot_t *slots, int64_t capacity, const uint64_t *queries, int64_t n, int64_t *out_start,
                    int64_t *out_count) {
    uint64_t mask = (uint64_t)capacity - 1;
    int shift = slot_shift(capacity);
    int64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (parallel(n))
    for (int64_t i = 0; i < n; i++) {
        uint64_t q = queries[i];
        int64_t s = hash_slot(q, shift);
        while (slots[s].count && slots[s].key != q) s = (s + 1) & (int64_t)mask;
        out_start[i] = slots[s].start;  /* 0 in an empty slot */
        out_count[i] = slots[s].count;
        total += slots[s].count;
    }
    return total;
}

/* A probe past the two hashed key columns: each run [starts[i], starts[i] + counts[i]) of a
 * sorted index, whose rows are sorted there by the column at half `half` of a row (halves_width
 * uint32 halves a row), narrowed in place to the rows where that column is values[i]: two
 * binary searches, however long the run. Returns the narrowed counts' sum. */
int64_t narrow_runs(const uint32_t *halves, int64_t halves_width, int64_t half, const uint32_t *values, int64_t n,
                    int64_t *starts, int64_t *counts) {
    int64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (parallel(n))
    for (int64_t i = 0; i < n; i++) {
        int64_t lo = starts[i], end = lo + counts[i], hi = end;
        uint32_t v = values[i];
        while (lo < hi) {
            int64_t mid = lo + (hi - lo) / 2;
            if (halves[mid * halves_width + half] < v) lo = mid + 1;
            else hi = mid;
        }
        int64_t past = lo;
        hi = end;
        while (past < hi) {
            int64_t mid = past + (hi - past) / 2;
            if (halves[mid * halves_width + half] <= v) past = mid + 1;
            else hi = mid;
        }
        starts[i] = lo;
        counts[i] = past - lo;
        total += past - lo;
    }
    return total;
}

/* Dedup of rows as one 64-bit key each (sets._sort_unique_narrow): an (n, width) uint32 table's
 * least and greatest value per column, in one pass. */
void column_bounds(const uint32_t *t, int64_t n, int64_t width, uint32_t *lo, uint32_t *hi) {
    for (int64_t c = 0; c < width; c++) {
        lo[c] = UINT32_MAX;
        hi[c] = 0;
    }
    for (int64_t i = 0; i < n; i++) {
        const uint32_t *row = t + i * width;
        for (int64_t c = 0; c < width; c++) {
            if (row[c] < lo[c]) lo[c] = row[c];
            if (row[c] > hi[c]) hi[c] = row[c];
        }
    }
}

/* Each row's key: column c less lows[c], shifted by shifts[c] (widths[c] bits; a constant column,
 * width 0, adds nothing), summed; with the shifts descending in the rows' order of significance
 * the keys sort as the rows. */
void pack_keys(const uint32_t *t, int64_t n, int64_t width, const uint32_t *lows, const int64_t *shifts,
               const int64_t *widths, uint64_t *keys) {
#pragma omp parallel for schedule(static) if (parallel(n))
    for (int64_t i = 0; i < n; i++) {
        const uint32_t *row = t + i * width;
        uint64_t key = 0;
        for (int64_t c = 0; c < width; c++) {
            if (widths[c]) key |= (uint64_t)(row[c] - lows[c]) << shifts[c];
        }
        keys[i] = key;
    }
}

/* pack_keys' inverse: each key's row into t. */
void unpack_keys(const uint64_t *keys, int64_t n, int64_t width, const uint32_t *lows, const int64_t *shifts,
                 const int64_t *widths, uint32_t *t) {
#pragma omp parallel for schedule(static) if (parallel(n))
    for (int64_t i = 0; i < n; i++) {
        uint32_t *row = t + i * width;
        for (int64_t c = 0; c < width; c++) {
            uint64_t mask = widths[c] >= 64 ? ~0ULL : (1ULL << widths[c]) - 1;
            row[c] = widths[c] ? (uint32_t)((keys[i] >> shifts[c]) & mask) + lows[c] : lows[c];
        }
    }
}

/* A direct-address index over a sorted run whose distinct keys lie in a short range lo .. lo +
 * slots - 2 (node and symbol ids mostly do): out[k] is the first row whose key is lo + k or
 * more, so key lo + k's run is rows out[k] .. out[k + 1]. Four bytes per value of the range
 * against a hash slot's sixteen per key at load 1/3 to 2/3 (dyck's tables were 24-48 bytes a
 * key), and a probe reads two adjacent words where the hash table reads a slot after a probe
 * sequence. ``keys``/``starts``: the run's key directory (sorted, all at least lo). */
void offsets_build(const uint64_t *keys, const int64_t *starts, int64_t n, uint64_t lo, int64_t slots, int64_t rows,
                   uint32_t *out) {
    int64_t j = 0;
    for (int64_t k = 0; k < slots; k++) {
        while (j < n && keys[j] - lo < (uint64_t)k) j++;
        out[k] = (uint32_t)(j < n ? starts[j] : rows);
    }
}

/* Whether row i of sorted rows starts a key (each row's first word shifted right by shift). */
static inline int key_starts(const uint64_t *rows, int64_t i, int64_t w, int shift) {
    return i == 0 || rows[i * w] >> shift != rows[(i - 1) * w] >> shift;
}

/* A sorted run's key directory read from its rows in place: the distinct keys (each row's first
 * word shifted right by ``shift``: 32 for the first column, 0 for the first two), the first row
 * of each and its row count. With ``keys`` NULL it only counts them, returning how many, and
 * leaves in found[0 .. PARTS_MAX] the keys before each part of the rows; the call that writes
 * them takes that found back. Two passes over the rows hold no array of n keys beside them (a
 * 3.7 M-row run's took 30 MB); each runs over parts of the rows on the OpenMP threads, the
 * second writing a part's keys after the keys the parts before it counted. */
int64_t key_directory(const uint64_t *rows, int64_t n, int64_t w, int shift, int64_t *found, uint64_t *keys,
                      int64_t *starts, int64_t *counts) {
    int64_t parts = parts_for(n);
    if (keys == NULL) {
        found[0] = 0;
#pragma omp parallel for schedule(static, 1) num_threads((int)parts) if (parts > 1)
        for (int64_t p = 0; p < parts; p++) {
            int64_t d = 0;
            for (int64_t i = n * p / parts; i < n * (p + 1) / parts; i++) d += key_starts(rows, i, w, shift);
            found[p + 1] = d;
        }
        for (int64_t p = 0; p < parts; p++) found[p + 1] += found[p];
        return found[parts];
    }
#pragma omp parallel for schedule(static, 1) num_threads((int)parts) if (parts > 1)
    for (int64_t p = 0; p < parts; p++) {
        int64_t d = found[p];
        for (int64_t i = n * p / parts; i < n * (p + 1) / parts; i++) {
            if (key_starts(rows, i, w, shift)) {
                keys[d] = rows[i * w] >> shift;
                starts[d++] = i;
            }
        }
    }
    int64_t d = found[parts];
    for (int64_t k = 0; k + 1 < d; k++) counts[k] = starts[k + 1] - starts[k];
    if (d > 0) counts[d - 1] = n - starts[d - 1];
    return d;
}

/* The first row in lo .. hi whose first word is at least q (more than q with ``above``). */
static inline int64_t bisect_word(const uint64_t *rows, int64_t w, int64_t lo, int64_t hi, uint64_t q, int above) {
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        uint64_t v = rows[mid * w];
        if (v < q || (above && v == q)) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* hash_ranges over offsets_build's index of the queries' bits from ``shift`` up: (first row,
 * run length) per query, 0 and 0 where the key is absent (outside the range, or an empty run
 * inside it); returns the lengths' sum. With ``rows`` (the sorted (n, w) words the index is
 * over, two-column keys in the first word, shift 32) the index finds the run of the key's
 * first column and a binary search within it the key's own run: a sorted array needs no
 * table of its two-column keys where each first column's run is short. */
int64_t offset_ranges(const uint32_t *offsets, int64_t slots, uint64_t lo, int shift, const uint64_t *rows, int64_t w,
                      const uint64_t *queries, int64_t n, int64_t *out_start, int64_t *out_count) {
    uint64_t keys = (uint64_t)slots - 1;
    int64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (parallel(n))
    for (int64_t i = 0; i < n; i++) {
        uint64_t q = queries[i], k = (q >> shift) - lo; /* wraps past the range for a query below lo */
        int64_t start = 0, count = 0;
        if (k < keys) {
            int64_t end = offsets[k + 1];
            start = offsets[k];
            if (rows != NULL) {
                start = bisect_word(rows, w, start, end, q, 0);
                end = bisect_word(rows, w, start, end, q, 1);
            }
            count = end - start;
            start = count ? start : 0;
        }
        out_start[i] = start;
        out_count[i] = count;
        total += count;
    }
    return total;
}

/* The bitmap's bit of a one-word row, or -1 outside the box [lo0, lo0 + r0) x [lo1, lo1 + r1). */
static inline int64_t dense_bit(uint64_t v, uint64_t lo0, uint64_t lo1, uint64_t r0, uint64_t r1) {
    uint64_t a = (v >> 32) - lo0, b = (v & 0xFFFFFFFFULL) - lo1;
    return (a < r0 && b < r1) ? (int64_t)(a * r1 + b) : -1;
}

/* Set the bitmap bit of every in-box row (dense.py). */
void dense_mark(const uint64_t *rows, int64_t n, uint8_t *bits, uint64_t lo0, uint64_t lo1, uint64_t r0, uint64_t r1) {
    for (int64_t i = 0; i < n; i++) {
        int64_t k = dense_bit(rows[i], lo0, lo1, r0, r1);
        if (k >= 0) bits[k >> 3] |= (uint8_t)(1u << (k & 7));
    }
}

/* Bitmap dedup (dense.py): in-box rows not yet marked go to fresh (and are marked), out-of-box
 * rows to outside, both in arrival order; found[0], found[1] = their counts. Most rows of a
 * dense join are already marked (REACH on wiki-Vote: 297 M rows for 12 M new), so a first pass
 * over parts of the rows, one per thread and reading the bitmap only, keeps the unmarked ones;
 * a serial second pass over those marks them, dropping rows repeated within the call. */
void dense_novel(const uint64_t *rows, int64_t n, uint8_t *bits, uint64_t lo0, uint64_t lo1, uint64_t r0,
                 uint64_t r1, uint64_t *fresh, uint64_t *outside, int64_t *found) {
    int64_t parts = parts_for(n), ends[PARTS_MAX][2];
#pragma omp parallel for schedule(static, 1) num_threads((int)parts) if (parts > 1)
    for (int64_t p = 0; p < parts; p++) { /* a part's unmarked and out-of-box rows, each from its first row's position */
        int64_t nf = n * p / parts, no = nf;
        for (int64_t i = nf; i < n * (p + 1) / parts; i++) {
            uint64_t v = rows[i];
            int64_t k = dense_bit(v, lo0, lo1, r0, r1);
            if (k < 0) outside[no++] = v;
            else if (!(bits[k >> 3] & (1u << (k & 7)))) fresh[nf++] = v;
        }
        ends[p][0] = nf;
        ends[p][1] = no;
    }
    int64_t nf = 0, no = 0; /* the parts' rows made contiguous: a part's start is never below what came before */
    for (int64_t p = 0; p < parts; p++) {
        int64_t start = n * p / parts;
        for (int64_t i = start; i < ends[p][0]; i++) {
            uint64_t v = fresh[i];
            int64_t k = dense_bit(v, lo0, lo1, r0, r1);
            uint8_t bit = (uint8_t)(1u << (k & 7));
            if (!(bits[k >> 3] & bit)) {
                bits[k >> 3] |= bit;
                fresh[nf++] = v;
            }
        }
        memmove(outside + no, outside + start, (size_t)(ends[p][1] - start) * 8);
        no += ends[p][1] - start;
    }
    found[0] = nf;
    found[1] = no;
}

/* Rows (n, k) as delimited text, one line each, into out (long enough: the caller sums what
 * each column needs, format_bytes); returns the length. kind[j]: column j holds unsigned values
 * (0), int32 bit patterns (1), written in decimal, or ids of texts (2: text i is
 * text_data[text_offsets[i], text_offsets[i + 1]), written as its bytes are). */
int64_t format_rows(const uint32_t *columns, int64_t n, int64_t k, const uint8_t *kind, uint8_t delimiter,
                    const uint8_t *text_data, const int64_t *text_offsets, uint8_t *out) {
    int64_t p = 0;
    char digits[12];
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < k; j++) {
            uint32_t raw = columns[i * k + j];
            if (kind[j] == 2) {
                int64_t start = text_offsets[raw], size = text_offsets[raw + 1] - start;
                memcpy(out + p, text_data + start, (size_t)size);
                p += size;
                out[p++] = j < k - 1 ? delimiter : '\n';
                continue;
            }
            uint64_t v = raw;
            if (kind[j] == 1 && (int32_t)raw < 0) {
                out[p++] = '-';
                v = (uint64_t)(-(int64_t)(int32_t)raw);
            }
            int d = 0;
            do {
                digits[d++] = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            while (d) out[p++] = (uint8_t)digits[--d];
            out[p++] = j < k - 1 ? delimiter : '\n';
        }
    }
    return p;
}

/* One number field of a fact file, [s, e), as Soufflé 2.5's reader takes it (std::stoi and
 * std::stoul after its prefix check): number is [space]*[+-]?[0-9]+ within int32; unsigned is
 * 0x[0-9a-fA-F]+, 0b[space]*[+-]?[01]+, or [space]*[+-]?[0-9]+ not starting with '-', and must
 * fit 32 bits (Soufflé keeps what overflows modulo 2^32; here such a value, or a minus before
 * anything but 0, is an error). Returns 0 with the encoded value in *value, else -1. */
static int parse_field(const uint8_t *s, const uint8_t *e, int is_signed, uint32_t *value) {
    uint64_t base = 10;
    int spaces_and_sign = 1;
    if (!is_signed && e - s >= 2 && s[0] == '0' && (s[1] == 'b' || s[1] == 'x')) {
        base = s[1] == 'b' ? 2 : 16;
        spaces_and_sign = base == 2; /* strtoul skips them after 0b (it parses what follows) */
        s += 2;
    } else if (!is_signed && s < e && s[0] == '-') {
        return -1;
    }
    int negative = 0;
    if (spaces_and_sign) {
        while (s < e && (*s == ' ' || (*s >= '\t' && *s <= '\r'))) s++;
        if (s < e && (*s == '+' || *s == '-')) negative = *s++ == '-';
    }
    if (s == e) return -1;
    uint64_t v = 0;
    for (; s < e; s++) {
        uint64_t d;
        if (*s >= '0' && *s <= '9') d = (uint64_t)(*s - '0');
        else if (*s >= 'a' && *s <= 'f') d = (uint64_t)(*s - 'a' + 10);
        else if (*s >= 'A' && *s <= 'F') d = (uint64_t)(*s - 'A' + 10);
        else return -1;
        if (d >= base) return -1;
        v = v * base + d;
        if (v > 0xFFFFFFFFULL) return -1; /* too large for either type; stops overflow */
    }
    if (is_signed) {
        if (v > (negative ? 0x80000000ULL : 0x7FFFFFFFULL)) return -1;
        *value = (uint32_t)(int32_t)(negative ? -(int64_t)v : (int64_t)v) ^ 0x80000000u;
    } else {
        if (negative && v) return -1;
        *value = (uint32_t)v;
    }
    return 0;
}

/* Where the delimiter first starts in [p, end), or end. */
static int64_t find_delimiter(const uint8_t *data, int64_t p, int64_t end, const uint8_t *delimiter, int64_t dlen) {
    if (dlen == 1) {
        const uint8_t *found = p < end ? memchr(data + p, delimiter[0], (size_t)(end - p)) : NULL;
        return found ? found - data : end;
    }
    for (; p + dlen <= end; p++) {
        if (data[p] == delimiter[0] && memcmp(data + p, delimiter, (size_t)dlen) == 0) return p;
    }
    return end;
}

/* Fact text as Soufflé 2.5 reads it (fact_input.py's format), unquoted: lines end in \n, one \r
 * before it dropped, empty lines skipped unless keep_empty (a relation of one symbol field,
 * whose empty line is the empty string); the first `fields` fields of a line split by the
 * delimiter, what follows them ignored; field k goes to column target[k] (-1: not read). A
 * number or unsigned column (kind[j] 1 or 0) is parsed by parse_field into the encoded (n,
 * arity) uint32 rows `out`; a symbol column (kind[j] 2) is left there for the caller, its
 * field's bytes [start, end) written to spans[2 * (n * symbols + slot[j])]. Returns the row
 * count, or -1 at the first malformed or out-of-range line (the reference reader then names
 * it). */
int64_t parse_fields(const uint8_t *data, int64_t len, const uint8_t *delimiter, int64_t dlen, int64_t fields,
                     const int64_t *target, const uint8_t *kind, const int64_t *slot, int64_t arity, int64_t symbols,
                     uint32_t *out, int64_t *spans, int64_t capacity, int64_t keep_empty) {
    int64_t p = 0, n = 0;
    while (p < len) {
        const uint8_t *newline = memchr(data + p, '\n', (size_t)(len - p));
        int64_t line_end = newline ? newline - data : len, end = line_end;
        if (end > p && data[end - 1] == '\r') end--;
        if (end > p || keep_empty) {
            if (n >= capacity) return -1;
            int64_t q = p;
            for (int64_t k = 0; k < fields; k++) {
                if (q > end) return -1; /* fewer fields than needed */
                int64_t field_end = find_delimiter(data, q, end, delimiter, dlen);
                int64_t j = target[k];
                if (j >= 0 && kind[j] == 2) {
                    spans[2 * (n * symbols + slot[j])] = q;
                    spans[2 * (n * symbols + slot[j]) + 1] = field_end;
                } else if (j >= 0 && parse_field(data + q, data + field_end, kind[j], &out[n * arity + j]) < 0) {
                    return -1;
                }
                q = field_end + dlen;
            }
            n++;
        }
        p = line_end + 1;
    }
    return n;
}

/* The bytes of n spans of data side by side (a text column): span i is [spans[i * stride],
 * spans[i * stride + 1]), written to out from offsets[i] (offsets[n]: the total, precomputed). */
void gather_spans(const uint8_t *data, const int64_t *spans, int64_t stride, int64_t n, const int64_t *offsets,
                  uint8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        memcpy(out + offsets[i], data + spans[i * stride], (size_t)(offsets[i + 1] - offsets[i]));
    }
}

/* Texts (the symbol table's, a column's): text i is data[offsets[i], offsets[i + 1]). A hash
 * index over them is open addressing with linear probing over uint64 slots, capacity a power of
 * two at least twice the rows: 0 is empty, else a text's hash in the high 32 bits and its row + 1
 * in the low ones (rows below 2^32 - 1, as symbol ids), so that a probe compares the bytes of
 * only the texts whose hash matches. */
static inline uint64_t text_hash(const uint8_t *s, int64_t len) {
    uint64_t h = (uint64_t)len * HASH_MULT, w;
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    if (i < len) {
        w = 0;
        memcpy(&w, s + i, (size_t)(len - i));
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    return h;
}

/* The slot that holds the text s (len bytes, hash h) in the index of (data, offsets), or the
 * empty slot where it would go. */
static inline int64_t text_slot(const uint8_t *data, const int64_t *offsets, const uint64_t *slots, int64_t capacity,
                                const uint8_t *s, int64_t len, uint64_t h) {
    uint64_t tag = h << 32;
    int64_t mask = capacity - 1;
    for (int64_t i = hash_slot(h, slot_shift(capacity));; i = (i + 1) & mask) {
        uint64_t slot = slots[i];
        if (slot == 0) return i;
        if ((slot & 0xFFFFFFFF00000000ULL) == tag) {
            int64_t row = (int64_t)(slot & 0xFFFFFFFFULL) - 1, start = offsets[row];
            if (offsets[row + 1] - start == len && memcmp(data + start, s, (size_t)len) == 0) return i;
        }
    }
}

/* Texts are hashed a block at a time, each one's first slot fetched ahead: a large index's probes
 * then wait on memory together rather than one after another. */
#define TEXT_BLOCK 16

static inline void text_block_hashes(const uint8_t *data, const int64_t *offsets, int64_t from, int64_t hi,
                                     const uint64_t *slots, int shift, uint64_t *hashes) {
    for (int64_t k = 0; k < TEXT_BLOCK && from + k < hi; k++) {
        int64_t i = from + k;
        hashes[k] = text_hash(data + offsets[i], offsets[i + 1] - offsets[i]);
        __builtin_prefetch(&slots[hash_slot(hashes[k], shift)]);
    }
}

/* Rows [lo, hi) of the texts into their index: first[i - lo] is the row of the first text equal
 * to row i, i itself when the index held none (it then joins). */
void index_texts(const uint8_t *data, const int64_t *offsets, int64_t lo, int64_t hi, uint64_t *slots, int64_t capacity,
                 int64_t *first) {
    uint64_t hashes[TEXT_BLOCK];
    int shift = slot_shift(capacity);
    for (int64_t i = lo; i < hi; i++) {
        if ((i - lo) % TEXT_BLOCK == 0) text_block_hashes(data, offsets, i, hi, slots, shift, hashes);
        const uint8_t *s = data + offsets[i];
        int64_t len = offsets[i + 1] - offsets[i];
        uint64_t h = hashes[(i - lo) % TEXT_BLOCK];
        int64_t at = text_slot(data, offsets, slots, capacity, s, len, h);
        if (slots[at] == 0) {
            slots[at] = (h << 32) | (uint64_t)(i + 1);
            first[i - lo] = i;
        } else {
            first[i - lo] = (int64_t)(slots[at] & 0xFFFFFFFFULL) - 1;
        }
    }
}

/* Per query text (queries, query_offsets: n texts), the row of the equal text in the index of
 * (data, offsets), -1 where it holds none. */
void find_texts(const uint8_t *data, const int64_t *offsets, const uint64_t *slots, int64_t capacity,
                const uint8_t *queries, const int64_t *query_offsets, int64_t n, int64_t *found) {
    uint64_t hashes[TEXT_BLOCK];
    int shift = slot_shift(capacity);
    for (int64_t i = 0; i < n; i++) {
        if (i % TEXT_BLOCK == 0) text_block_hashes(queries, query_offsets, i, n, slots, shift, hashes);
        const uint8_t *s = queries + query_offsets[i];
        int64_t len = query_offsets[i + 1] - query_offsets[i];
        uint64_t slot = slots[text_slot(data, offsets, slots, capacity, s, len, hashes[i % TEXT_BLOCK])];
        found[i] = slot ? (int64_t)(slot & 0xFFFFFFFFULL) - 1 : -1;
    }
}

/* Whether text a comes before text b: bytes compared as unsigned, a prefix first (C++'s string
 * order), equal texts by row. prefix[r]: row r's first 8 bytes big-endian, zero-padded, which
 * decides most comparisons without reading the texts. */
static inline int text_before(const uint8_t *data, const int64_t *offsets, const uint64_t *prefix, int64_t a, int64_t b) {
    if (prefix[a] != prefix[b]) return prefix[a] < prefix[b];
    int64_t la = offsets[a + 1] - offsets[a], lb = offsets[b + 1] - offsets[b];
    int c = memcmp(data + offsets[a], data + offsets[b], (size_t)(la < lb ? la : lb));
    if (c != 0) return c < 0;
    return la != lb ? la < lb : a < b;
}

/* The n rows of the texts in text order into order (stable), by a bottom-up merge sort through
 * scratch (n int64) and prefix (n uint64). */
void sort_texts(const uint8_t *data, const int64_t *offsets, int64_t n, int64_t *order, int64_t *scratch,
                uint64_t *prefix) {
    for (int64_t r = 0; r < n; r++) {
        int64_t start = offsets[r], len = offsets[r + 1] - start;
        uint64_t key = 0;
        for (int64_t b = 0; b < 8; b++) key = (key << 8) | (b < len ? data[start + b] : 0);
        prefix[r] = key;
        order[r] = r;
    }
    int64_t *from = order, *to = scratch;
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, p = lo;
            while (i < mid && j < hi) to[p++] = text_before(data, offsets, prefix, from[j], from[i]) ? from[j++] : from[i++];
            while (i < mid) to[p++] = from[i++];
            while (j < hi) to[p++] = from[j++];
        }
        int64_t *t = from;
        from = to;
        to = t;
    }
    if (from != order) memcpy(order, from, (size_t)n * sizeof(int64_t));
}

/* User-defined functors (Soufflé's stateless .functor, engine/user_functors.py): a C function
 * called once per row over argument columns. On x86-64 (System V) and AArch64 the integer-class
 * arguments (int32_t, uint32_t, const char *) go in the integer registers in their order and
 * the float arguments in the vector registers in theirs, independently, and a caller may fill
 * registers the callee never reads. So one pointer type with FUNCTOR_INTS integer and
 * FUNCTOR_FLOATS float parameters calls every functor whose arguments fit the registers, each
 * argument in its place within its class; only the result's class varies (int32_t in the low
 * half of the integer register, a pointer in all of it, a float in the first vector register).
 * The loop is sequential: a functor may keep its result in a static buffer (texts are copied
 * before the next call) and need not be thread-safe, as Soufflé's interpreter assumes. */
#if defined(__x86_64__) || defined(__aarch64__)
#define FUNCTOR_INTS 6
#define FUNCTOR_FLOATS 8
#define FUNCTOR_PARAMS int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                       float, float, float, float, float, float, float, float
typedef int32_t (*functor_int)(FUNCTOR_PARAMS);
typedef float (*functor_float)(FUNCTOR_PARAMS);
typedef const char *(*functor_text)(FUNCTOR_PARAMS);

enum { RESULT_INT = 0, RESULT_FLOAT = 1, RESULT_TEXT = 2 };

/* Row i's arguments: ints[k] (or 0 where the functor has fewer), floats[k] likewise. */
#define FUNCTOR_ARGS(i)                                                                                   \
    ints[0] ? ints[0][i] : 0, ints[1] ? ints[1][i] : 0, ints[2] ? ints[2][i] : 0, ints[3] ? ints[3][i] : 0, \
        ints[4] ? ints[4][i] : 0, ints[5] ? ints[5][i] : 0, floats[0] ? floats[0][i] : 0.0f,               \
        floats[1] ? floats[1][i] : 0.0f, floats[2] ? floats[2][i] : 0.0f, floats[3] ? floats[3][i] : 0.0f,  \
        floats[4] ? floats[4][i] : 0.0f, floats[5] ? floats[5][i] : 0.0f, floats[6] ? floats[6][i] : 0.0f,  \
        floats[7] ? floats[7][i] : 0.0f

/* Calls fn on rows 0..n-1: ints[k] the k-th integer-class argument column (int64: numbers
 * sign-extended, unsigned as they are, texts as addresses), floats[k] the k-th float argument
 * column, NULL past the last. A number or unsigned result goes to ((int32_t *)out)[i], a float
 * to ((float *)out)[i]; a text is copied at once into a buffer this function allocates
 * (*text, freed by free_functor_text) with offsets[i]..offsets[i + 1] its bytes. Returns 0, or
 * -1 when the buffer cannot grow, or -(i + 2) when the functor returned NULL at row i. */
int64_t call_functor(void *fn, int64_t kind, int64_t n, const int64_t *const *ints, const float *const *floats, void *out,
                     int64_t *offsets, char **text) {
    if (kind == RESULT_INT) {
        int32_t *o = out;
        for (int64_t i = 0; i < n; i++) o[i] = ((functor_int)fn)(FUNCTOR_ARGS(i));
        return 0;
    }
    if (kind == RESULT_FLOAT) {
        float *o = out;
        for (int64_t i = 0; i < n; i++) o[i] = ((functor_float)fn)(FUNCTOR_ARGS(i));
        return 0;
    }
    size_t capacity = 4096, used = 0;
    char *buffer = malloc(capacity);
    if (!buffer) return -1;
    offsets[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *s = ((functor_text)fn)(FUNCTOR_ARGS(i));
        if (!s) {
            free(buffer);
            return -(i + 2);
        }
        size_t len = strlen(s);
        if (used + len > capacity) {
            while (used + len > capacity) capacity *= 2;
            char *grown = realloc(buffer, capacity);
            if (!grown) {
                free(buffer);
                return -1;
            }
            buffer = grown;
        }
        memcpy(buffer + used, s, len);
        used += len;
        offsets[i + 1] = (int64_t)used;
    }
    *text = buffer;
    return 0;
}

void free_functor_text(char *text) { free(text); }
#endif

/* The address of a contiguous buffer (a NumPy array) for the ctypes calls: about ten times
 * cheaper than ndarray.ctypes.data, which builds a helper object per call, and a one-tuple
 * iteration passes some thirty arrays. */
static PyObject *address(PyObject *self, PyObject *obj) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_ANY_CONTIGUOUS) < 0) return NULL;
    void *buf = view.buf;
    PyBuffer_Release(&view);
    return PyLong_FromVoidPtr(buf);
}

/* The join step's kernels (hash_ranges or offset_ranges, gather_join) are called through
 * these, not ctypes: a ctypes call costs some 3 us of argument conversion, about what the
 * kernel itself takes on the hundreds of rows a many-rule fixpoint joins per step, and a join
 * step makes two. Each array argument is a C-contiguous buffer of the element size the kernel
 * reads (checked: a wrong one raises); the loops run without the GIL, as ctypes ran them. */
typedef struct {
    Py_buffer views[7];
    int held;
} Buffers;

static void release(Buffers *b) {
    for (int i = 0; i < b->held; i++) PyBuffer_Release(&b->views[i]);
    b->held = 0;
}

/* args[k]'s buffer into b->views[k] for each of the n arguments: items of sizes[k] bytes,
 * writable where writable[k]. On failure all are released and the exception is set. */
static int take_buffers(Buffers *b, PyObject *const *args, const Py_ssize_t *sizes, const int *writable, int n) {
    for (int k = 0; k < n; k++) {
        Py_buffer *view = &b->views[k];
        if (PyObject_GetBuffer(args[k], view, PyBUF_C_CONTIGUOUS | (writable[k] ? PyBUF_WRITABLE : 0)) < 0) {
            release(b);
            return -1;
        }
        b->held++;
        if (view->itemsize != sizes[k]) {
            PyErr_Format(PyExc_TypeError, "kernel argument %d: items of %zd bytes, not %zd", k, view->itemsize, sizes[k]);
            release(b);
            return -1;
        }
    }
    return 0;
}

/* hash_ranges(slots (capacity, 2) uint64, queries, out_start, out_count) -> the run lengths' sum */
static PyObject *py_hash_ranges(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    static const Py_ssize_t sizes[4] = {8, 8, 8, 8};
    static const int writable[4] = {0, 0, 1, 1};
    Buffers b = {.held = 0};
    if (nargs != 4) return PyErr_Format(PyExc_TypeError, "hash_ranges takes 4 arrays, not %zd", nargs);
    if (take_buffers(&b, args, sizes, writable, 4) < 0) return NULL;
    int64_t capacity = b.views[0].len / (Py_ssize_t)sizeof(hash_slot_t), n = b.views[1].len / 8, total;
    if (b.views[2].len / 8 < n || b.views[3].len / 8 < n) {
        release(&b);
        return PyErr_Format(PyExc_ValueError, "hash_ranges: outputs shorter than the %lld queries", (long long)n);
    }
    Py_BEGIN_ALLOW_THREADS
    total = hash_ranges(b.views[0].buf, capacity, b.views[1].buf, n, b.views[2].buf, b.views[3].buf);
    Py_END_ALLOW_THREADS
    release(&b);
    return PyLong_FromLongLong(total);
}

/* offset_ranges(offsets uint32, lo, shift, queries, out_start, out_count[, rows (n, w) uint64])
 * -> the run lengths' sum */
static PyObject *py_offset_ranges(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    static const Py_ssize_t sizes[5] = {4, 8, 8, 8, 8};
    static const int writable[5] = {0, 0, 1, 1, 0};
    PyObject *arrays[5];
    Buffers b = {.held = 0};
    if (nargs != 6 && nargs != 7)
        return PyErr_Format(PyExc_TypeError, "offset_ranges takes 6 or 7 arguments, not %zd", nargs);
    uint64_t lo = PyLong_AsUnsignedLongLong(args[1]);
    if (lo == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    long shift = PyLong_AsLong(args[2]);
    if (shift == -1 && PyErr_Occurred()) return NULL;
    if (shift != 0 && shift != 32) return PyErr_Format(PyExc_ValueError, "offset_ranges: shift %ld", shift);
    arrays[0] = args[0];
    for (int k = 1; k < (int)nargs - 2; k++) arrays[k] = args[k + 2];
    if (take_buffers(&b, arrays, sizes, writable, (int)nargs - 2) < 0) return NULL;
    Py_buffer *r = nargs == 7 ? &b.views[4] : NULL;
    int64_t slots = b.views[0].len / 4, n = b.views[1].len / 8, total;
    if (slots < 1 || b.views[2].len / 8 < n || b.views[3].len / 8 < n || (r != NULL && r->ndim != 2)) {
        release(&b);
        return PyErr_Format(PyExc_ValueError, "offset_ranges: no offsets, rows not (n, w) or outputs under %lld",
                            (long long)n);
    }
    const uint64_t *rows = r != NULL ? r->buf : NULL;
    int64_t w = r != NULL ? r->shape[1] : 0;
    Py_BEGIN_ALLOW_THREADS
    total = offset_ranges(b.views[0].buf, slots, lo, (int)shift, rows, w, b.views[1].buf, n, b.views[2].buf,
                          b.views[3].buf);
    Py_END_ALLOW_THREADS
    release(&b);
    return PyLong_FromLongLong(total);
}

/* gather_join(outer (n, k) uint32, starts, counts, offsets, halves (m, h) uint32, spec (c, 2), out (total, c)) */
static PyObject *py_gather_join(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    static const Py_ssize_t sizes[7] = {4, 8, 8, 8, 4, 8, 4};
    static const int writable[7] = {0, 0, 0, 1, 0, 0, 1};
    Buffers b = {.held = 0};
    if (nargs != 7) return PyErr_Format(PyExc_TypeError, "gather_join takes 7 arrays, not %zd", nargs);
    if (take_buffers(&b, args, sizes, writable, 7) < 0) return NULL;
    Py_buffer *o = &b.views[0], *h = &b.views[4], *s = &b.views[5], *w = &b.views[6];
    int64_t n = b.views[1].len / 8;
    if (o->ndim != 2 || h->ndim != 2 || s->ndim != 2 || w->ndim != 2 || o->shape[0] != n || b.views[2].len / 8 != n ||
        b.views[3].len / 8 != n || s->shape[1] != 2 || w->shape[1] != s->shape[0]) {
        release(&b);
        return PyErr_Format(PyExc_ValueError, "gather_join: inconsistent shapes");
    }
    Py_BEGIN_ALLOW_THREADS
    gather_join(o->buf, o->shape[1], b.views[1].buf, b.views[2].buf, b.views[3].buf, n, h->buf, h->shape[1], s->buf,
                s->shape[0], w->buf);
    Py_END_ALLOW_THREADS
    release(&b);
    Py_RETURN_NONE;
}

static PyMethodDef kernels_methods[] = {
    {"address", address, METH_O, "The address of a contiguous buffer's first byte."},
    {"hash_ranges", (PyCFunction)(void (*)(void))py_hash_ranges, METH_FASTCALL, "The join's count pass (hash_ranges)."},
    {"offset_ranges", (PyCFunction)(void (*)(void))py_offset_ranges, METH_FASTCALL,
     "The join's count pass over a direct-address index (offset_ranges)."},
    {"gather_join", (PyCFunction)(void (*)(void))py_gather_join, METH_FASTCALL, "The join's materialisation (gather_join)."},
    {NULL, NULL, 0, NULL}};

/* An importable module, so that the import system finds the library the wheel installed;
 * the other functions above are reached through ctypes. */
static struct PyModuleDef kernels_module = {PyModuleDef_HEAD_INIT, "_kernels",
                                            "The CPU kernels, called through ctypes or these functions (cpu_kernels.py).", -1,
                                            kernels_methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
