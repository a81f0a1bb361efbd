#pragma once
// Every SMOE_* switch lives here: #ifndef X / #define X default / why.

// Alignment of every workspace sub-buffer, in bytes. 64 covers one AVX-512 vector and one cache line,
// so a buffer carved for one ISA is also aligned for any narrower one.
#ifndef SMOE_WORKSPACE_ALIGNMENT
#define SMOE_WORKSPACE_ALIGNMENT 64
#endif

// Version of the library (kept in step with CMakeLists.txt's project(VERSION)).
#define SMOE_VERSION_MAJOR 0
#define SMOE_VERSION_MINOR 1
#define SMOE_VERSION_PATCH 0
