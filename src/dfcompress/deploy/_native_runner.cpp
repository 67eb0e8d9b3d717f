// dfcompress native runner: runs an ExecuTorch program's "forward" method on a batch of
// float32 inputs with ExecuTorch's C++ runtime alone (the libraries the executorch wheel
// ships: no Python, no libtorch), as an application on a phone runs the file.
//
//   runner PROGRAM.pte INPUT.f32 OUTPUT.f32
//
// INPUT.f32 holds the batch as raw little-endian float32 values; its item shape is the
// program's own (all but the first dimension) and the batch size is whatever the file
// holds. The first output is written to OUTPUT.f32 the same way, and one JSON line goes
// to stdout: the output's shape and the process's peak resident memory after the run.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <sys/resource.h>

namespace {

long long peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::stoll(line.substr(6)) * 1024;
    }
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
#if defined(__APPLE__)
  return static_cast<long long>(usage.ru_maxrss);
#else
  return static_cast<long long>(usage.ru_maxrss) * 1024;
#endif
}

int fail(int code, const char* what) {
  std::fprintf(stderr, "dfcompress native runner: %s\n", what);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  using executorch::extension::from_blob;
  using executorch::extension::Module;
  if (argc != 4) {
    return fail(2, "usage: runner PROGRAM.pte INPUT.f32 OUTPUT.f32");
  }
  Module module(argv[1], Module::LoadMode::File);
  auto meta = module.method_meta("forward");
  if (!meta.ok()) {
    return fail(3, "the file has no readable forward method");
  }
  auto info = meta->input_tensor_meta(0);
  if (!info.ok() || info->sizes().empty()) {
    return fail(3, "the forward method's first input is not a batched tensor");
  }
  std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
  size_t per_item = 1;
  std::string item;
  for (size_t i = 1; i < sizes.size(); ++i) {
    per_item *= static_cast<size_t>(sizes[i]);
    item += (item.empty() ? "" : ",") + std::to_string(sizes[i]);
  }
  const std::string expects = "the file takes batches of 1 to " + std::to_string(sizes[0]) +
                              " items of shape (" + item + ")";
  std::ifstream in(argv[2], std::ios::binary | std::ios::ate);
  if (!in) {
    return fail(4, "cannot open the input file");
  }
  const auto bytes = static_cast<size_t>(in.tellg());
  const size_t count = bytes / (per_item * sizeof(float));
  if (bytes == 0 || bytes % (per_item * sizeof(float)) != 0 ||
      count > static_cast<size_t>(sizes[0])) {
    return fail(4, ("the input does not fit: " + expects).c_str());
  }
  sizes[0] = static_cast<executorch::aten::SizesType>(count);
  std::vector<float> data(bytes / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(bytes));
  auto result = module.forward(from_blob(data.data(), sizes));
  if (!result.ok()) {
    std::fprintf(stderr, "dfcompress native runner: forward failed with error %d (%s)\n",
                 static_cast<int>(result.error()), expects.c_str());
    return 5;
  }
  if (result->empty() || !result->at(0).isTensor()) {
    return fail(5, "the first output is not a tensor");
  }
  const auto& out = result->at(0).toTensor();
  if (out.scalar_type() != executorch::aten::ScalarType::Float) {
    return fail(5, "the first output is not float32");
  }
  std::ofstream dst(argv[3], std::ios::binary);
  dst.write(reinterpret_cast<const char*>(out.const_data_ptr<float>()),
            static_cast<std::streamsize>(out.numel() * sizeof(float)));
  if (!dst) {
    return fail(6, "cannot write the output file");
  }
  std::string shape;
  for (auto s : out.sizes()) {
    shape += (shape.empty() ? "" : ",") + std::to_string(s);
  }
  std::printf("{\"shape\": [%s], \"peak_rss_bytes\": %lld}\n", shape.c_str(), peak_rss_bytes());
  return 0;
}
