#pragma once
// Replaces the global operator new (every form, so each allocation the deletes free comes from malloc)
// and counts the calls, for the allocation-free checks of forward. Replacement functions are defined
// once per program: include this in exactly one file of a test executable.

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<long> g_news{0};  // operator new calls so far
}

void* operator new(std::size_t n) {
    g_news.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a) {
    g_news.fetch_add(1, std::memory_order_relaxed);
    std::size_t const al = static_cast<std::size_t>(a);
    if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
    throw std::bad_alloc();
}
// The nothrow forms too (Catch allocates with them): every allocation the deletes below free must
// come from malloc, or ASan reports an alloc-dealloc mismatch.
void* operator new(std::size_t n, std::nothrow_t const&) noexcept {
    g_news.fetch_add(1, std::memory_order_relaxed);
    return std::malloc(n ? n : 1);
}
void* operator new(std::size_t n, std::align_val_t a, std::nothrow_t const&) noexcept {
    g_news.fetch_add(1, std::memory_order_relaxed);
    std::size_t const al = static_cast<std::size_t>(a);
    return std::aligned_alloc(al, (n + al - 1) / al * al);
}
// GCC cannot see that every operator new above allocates with malloc and warns on the free.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::nothrow_t const&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, std::nothrow_t const&) noexcept { std::free(p); }
#pragma GCC diagnostic pop
