#pragma once
// smoe::io: reading and writing safetensors files and Hugging Face checkpoint folders.
// Optional: these headers need nlohmann-json (`#include <nlohmann/json.hpp>`); the core library
// never includes them.
//
//   auto f = smoe::io::SafetensorsFile::open("weights.safetensors");   // mmap + full validation
//   std::vector<float> w = smoe::io::read_f32(f, "gate.weight", {64, -1});  // F32/BF16/F16 -> float
//   auto ckpt = smoe::io::Checkpoint::open("Mixtral-8x7B/");             // follows the shard index
//   smoe::io::SafetensorsWriter out; out.add_f32("y", {2, 3}, y); out.write("out.safetensors");

#include <smoe/io/checkpoint.hpp>
#include <smoe/io/dtype.hpp>
#include <smoe/io/file_error.hpp>
#include <smoe/io/safetensors_file.hpp>
#include <smoe/io/safetensors_writer.hpp>
#include <smoe/io/strict_json.hpp>
#include <smoe/io/tensor_read.hpp>
