// Comm (src/comm): the single-process Comm, the launcher's environment and the timeout setting in a
// plain run; under mpirun (ctest also runs this binary with 2 and 3 ranks) the MPI Comm's collectives.
//
// Under mpirun every rank runs every test and calls the same collectives in the same order, so the
// checks there are EXPECTs: an ASSERT that returned early would leave the other ranks waiting.

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#ifdef MOERUN_HAVE_NCCL
#include <cuda_runtime.h>
#endif

#include "comm/comm.h"
#include "support/expect.h"

namespace moerun::comm {
namespace {

using moerun::testing::error_of;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Sets (value) or unsets (nullptr) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_.c_str(), old_->c_str(), 1);
    else unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// No launcher variables for one scope (the test may run under mpirun: they come back after).
struct NoLauncher {
  ScopedEnv a{"OMPI_COMM_WORLD_SIZE", nullptr}, b{"OMPI_COMM_WORLD_RANK", nullptr}, c{"PMI_SIZE", nullptr},
      d{"PMI_RANK", nullptr}, e{"PMIX_RANK", nullptr};
};

uint16_t bits_of_bf16(float f) {  // f must be a bf16 value
  uint32_t u;
  std::memcpy(&u, &f, 4);
  EXPECT_EQ(u & 0xffffu, 0u) << f << " is not a bf16 value";
  return static_cast<uint16_t>(u >> 16);
}

float bf16_value(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The bf16 nearest to the (normal, finite) x, ties to the even significand: written from the
// definition (two neighbours, compare distances), not from the bit trick the Comm uses.
uint16_t bf16_nearest(double x) {
  if (x == 0) return std::signbit(x) ? 0x8000 : 0;
  int e;
  std::frexp(std::fabs(x), &e);                // |x| = m 2^e, m in [0.5, 1)
  const double ulp = std::ldexp(1.0, e - 8);  // bf16 keeps 8 significant bits
  const double steps = std::floor(std::fabs(x) / ulp);
  const double below = steps * ulp, above = below + ulp;
  const double d_below = std::fabs(x) - below, d_above = above - std::fabs(x);
  const bool up = d_above < d_below || (d_above == d_below && std::fmod(steps, 2.0) != 0);
  return bits_of_bf16(static_cast<float>(std::copysign(up ? above : below, x)));
}

// ----- every run --------------------------------------------------------------------------------

TEST(Comm, TypeBytes) {
  EXPECT_EQ(type_bytes(Type::f32), 4u);
  EXPECT_EQ(type_bytes(Type::bf16), 2u);
  EXPECT_EQ(type_bytes(Type::i32), 4u);
  EXPECT_EQ(type_bytes(Type::u8), 1u);
}

TEST(SingleComm, IsRankZeroOfOne) {
  auto c = make_single();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_STREQ(c->name(), "single");
  EXPECT_FALSE(c->device_buffers());
  EXPECT_EQ(c->local_rank(), 0);
  EXPECT_EQ(c->local_size(), 1);
}

TEST(SingleComm, CollectivesAreIdentities) {
  auto c = make_single();
  std::vector<float> data = {1.5f, -2.25f, std::numeric_limits<float>::quiet_NaN(), 3e38f};
  const std::vector<float> before = data;
  c->all_reduce_sum(data.data(), data.size(), Type::f32);
  EXPECT_EQ(std::memcmp(data.data(), before.data(), data.size() * 4), 0) << "all_reduce of one rank changed the data";

  const std::vector<int32_t> send = {7, -8, 9};
  std::vector<int32_t> recv(3, 0);
  c->all_gather(send.data(), recv.data(), send.size(), Type::i32);
  EXPECT_EQ(recv, send);

  std::vector<uint8_t> bytes = {1, 2, 3};
  c->broadcast(bytes.data(), bytes.size(), Type::u8, 0);
  c->broadcast_idle(bytes.data(), bytes.size(), 0);
  c->barrier();
  c->synchronize(nullptr);
  EXPECT_EQ(bytes, (std::vector<uint8_t>{1, 2, 3}));

  EXPECT_EQ(c->stats().calls, 5u);
  EXPECT_EQ(c->stats().bytes, 16u + 12u + 3u + 3u);
  c->reset_stats();
  EXPECT_EQ(c->stats().calls, 0u);
  EXPECT_EQ(c->stats().bytes, 0u);
}

TEST(SingleComm, RefusesARootThatIsNotARank) {
  auto c = make_single();
  uint8_t b = 0;
  const std::string msg = error_of([&] { c->broadcast(&b, 1, Type::u8, 1); });
  EXPECT_NE(msg.find("rank 0 of 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("root 1"), std::string::npos) << msg;
  EXPECT_THROW(c->broadcast_idle(&b, 1, -1), CommError);
}

TEST(LaunchEnv, NoLauncherMeansOneProcess) {
  NoLauncher none;
  EXPECT_FALSE(launched_by_mpi());
  EXPECT_EQ(launch_size(), 1);
  EXPECT_EQ(launch_rank(), 0);
}

TEST(LaunchEnv, OpenMpi) {
  NoLauncher none;
  ScopedEnv size("OMPI_COMM_WORLD_SIZE", "4"), rank("OMPI_COMM_WORLD_RANK", "2"), pmix("PMIX_RANK", "2");
  EXPECT_TRUE(launched_by_mpi());
  EXPECT_EQ(launch_size(), 4);
  EXPECT_EQ(launch_rank(), 2);
}

TEST(LaunchEnv, OneProcessUnderMpirunStillCounts) {
  NoLauncher none;
  ScopedEnv size("OMPI_COMM_WORLD_SIZE", "1"), rank("OMPI_COMM_WORLD_RANK", "0");
  EXPECT_TRUE(launched_by_mpi());
  EXPECT_EQ(launch_size(), 1);
  EXPECT_EQ(launch_rank(), 0);
}

TEST(LaunchEnv, PmiAndPmix) {
  {
    NoLauncher none;
    ScopedEnv size("PMI_SIZE", "3"), rank("PMI_RANK", "1");
    EXPECT_TRUE(launched_by_mpi());
    EXPECT_EQ(launch_size(), 3);
    EXPECT_EQ(launch_rank(), 1);
  }
  {
    NoLauncher none;
    ScopedEnv rank("PMIX_RANK", "5");  // Slurm's PMIx: a rank, no size
    EXPECT_TRUE(launched_by_mpi());
    EXPECT_EQ(launch_size(), 1);
    EXPECT_EQ(launch_rank(), 5);
  }
}

TEST(LaunchEnv, MalformedValuesNameTheVariable) {
  NoLauncher none;
  {
    ScopedEnv size("OMPI_COMM_WORLD_SIZE", "two");
    const std::string msg = error_of([] { launch_size(); });
    EXPECT_NE(msg.find("OMPI_COMM_WORLD_SIZE"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'two'"), std::string::npos) << msg;
  }
  {
    ScopedEnv size("OMPI_COMM_WORLD_SIZE", "2"), rank("OMPI_COMM_WORLD_RANK", "2");
    const std::string msg = error_of([] { launch_rank(); });
    EXPECT_NE(msg.find("OMPI_COMM_WORLD_RANK"), std::string::npos) << msg;
  }
  {
    ScopedEnv size("PMI_SIZE", "0");
    EXPECT_NE(error_of([] { launch_size(); }).find("PMI_SIZE"), std::string::npos);
  }
  {
    ScopedEnv rank("PMI_RANK", "-1");
    EXPECT_NE(error_of([] { launch_rank(); }).find("PMI_RANK"), std::string::npos);
  }
}

TEST(CommTimeout, DefaultAndEnvironment) {
  {
    ScopedEnv unset("MOERUN_COMM_TIMEOUT", nullptr);
    EXPECT_EQ(collective_timeout_seconds(), 60.0);
  }
  {
    ScopedEnv t("MOERUN_COMM_TIMEOUT", "2.5");
    EXPECT_EQ(collective_timeout_seconds(), 2.5);
  }
  {
    ScopedEnv t("MOERUN_COMM_TIMEOUT", "600");
    EXPECT_EQ(collective_timeout_seconds(), 600.0);
  }
}

TEST(CommTimeout, MalformedValuesNameTheVariable) {
  for (const char* bad : {"", "0", "-1", "abc", "10s", "nan", "inf", "1e999"}) {
    ScopedEnv t("MOERUN_COMM_TIMEOUT", bad);
    const std::string msg = error_of([] { collective_timeout_seconds(); });
    EXPECT_NE(msg.find("MOERUN_COMM_TIMEOUT"), std::string::npos) << "value '" << bad << "': " << msg;
  }
}

TEST(CommBuild, MissingBackendsSayHowToGetThem) {
#ifdef MOERUN_HAVE_MPI
  EXPECT_TRUE(have_mpi());
#else
  EXPECT_FALSE(have_mpi());
  const std::string msg = error_of([] { mpi_world(); });
  EXPECT_NE(msg.find("built without MPI"), std::string::npos) << msg;
  EXPECT_NE(msg.find("-DMOERUN_MPI=ON"), std::string::npos) << msg;
#endif
#ifdef MOERUN_HAVE_NCCL
  EXPECT_TRUE(have_nccl());
#else
  EXPECT_FALSE(have_nccl());
  auto single = make_single();
  const std::string msg2 = error_of([&] { make_nccl(*single, 0); });
  EXPECT_NE(msg2.find("without NCCL"), std::string::npos) << msg2;
#endif
}

// ----- under mpirun -----------------------------------------------------------------------------

class MpiWorld : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!launched_by_mpi()) GTEST_SKIP() << "not started by mpirun (ctest runs the comm_tests_np* variants)";
    comm_ = mpi_world();
  }
  Comm& c() { return *comm_; }
  int rank() { return comm_->rank(); }
  int size() { return comm_->size(); }

  // Every rank's `bytes` at `data` equal rank 0's, bit for bit.
  void expect_same_on_all_ranks(const void* data, size_t bytes, const char* what) {
    std::vector<uint8_t> all(bytes * size_t(size()));
    c().all_gather(data, all.data(), bytes, Type::u8);
    for (int r = 1; r < size(); ++r)
      EXPECT_EQ(std::memcmp(all.data(), all.data() + size_t(r) * bytes, bytes), 0)
          << what << ": rank " << r << " differs from rank 0 (seen on rank " << rank() << ")";
  }

  std::shared_ptr<Comm> comm_;
};

TEST_F(MpiWorld, RankAndSizeMatchTheLauncher) {
  EXPECT_STREQ(c().name(), "mpi");
  EXPECT_FALSE(c().device_buffers());
  EXPECT_EQ(c().rank(), launch_rank());
  EXPECT_EQ(c().size(), launch_size());
  EXPECT_EQ(mpi_world().get(), comm_.get()) << "mpi_world() must return the same Comm every time";
  // ctest starts every rank on this machine.
  EXPECT_EQ(c().local_size(), c().size());
  EXPECT_EQ(c().local_rank(), c().rank());
}

TEST_F(MpiWorld, AllReduceF32IsExactWhereTheSumIsExact) {
  // Sizes from one element to several MiB, so Open MPI's small- and large-message algorithms both run.
  for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(12345), size_t(1) << 20}) {
    // Multiples of 1/4 below 2^20 (few significant bits): every partial sum is exact in fp32, so any
    // order of summation gives the same value and it can be checked exactly.
    auto value = [](int r, size_t i) {
      return static_cast<float>((int64_t(i % 1013) * (r + 1) - int64_t(i % 7) * 37 * r) * 0.25 - r * 1024.0);
    };
    std::vector<float> data(n);
    for (size_t i = 0; i < n; ++i) data[i] = value(rank(), i);
    c().all_reduce_sum(data.data(), n, Type::f32);
    size_t wrong = 0;
    for (size_t i = 0; i < n; ++i) {
      double want = 0;
      for (int r = 0; r < size(); ++r) want += value(r, i);
      if (data[i] != static_cast<float>(want) && wrong++ < 5)
        ADD_FAILURE() << "n=" << n << " element " << i << ": " << data[i] << ", want " << want << " (rank " << rank() << ")";
    }
    EXPECT_EQ(wrong, 0u) << "n=" << n;
  }
}

TEST_F(MpiWorld, AllReduceF32IsTheSameBitsOnEveryRank) {
  for (size_t n : {size_t(3), size_t(4099), size_t(300000)}) {
    // Values whose sums round: the order of summation matters, the ranks must still agree.
    auto value = [](int r, size_t i) { return static_cast<float>(std::sin(0.37 * double(i) + r) * std::pow(10.0, r % 3)); };
    std::vector<float> data(n);
    for (size_t i = 0; i < n; ++i) data[i] = value(rank(), i);
    c().all_reduce_sum(data.data(), n, Type::f32);
    size_t far = 0;
    for (size_t i = 0; i < n; ++i) {
      double want = 0;
      for (int r = 0; r < size(); ++r) want += value(r, i);
      if (std::fabs(data[i] - want) > 1e-4 * (1 + std::fabs(want))) ++far;
    }
    EXPECT_EQ(far, 0u) << "n=" << n << ": elements far from the sum on rank " << rank();
    expect_same_on_all_ranks(data.data(), n * 4, "f32 all_reduce");
  }
}

TEST_F(MpiWorld, AllReduceBf16RoundsToNearestEven) {
  if (size() < 2) GTEST_SKIP() << "needs 2 ranks";
  // Rank 0 gives x, rank 1 gives y, other ranks +0: the result is round(x + y) whatever MPI's order
  // (adding +0 is exact). x + y of bf16 values within a few binades is exact in fp32, so the op's
  // one rounding is the reference's.
  std::vector<float> x = {1.0f,                  // 1 + 2^-8: a tie, to even: 1.0 (half up would give 1+2^-7)
                          1.0078125f,            // (1 + 2^-7) + 2^-8: a tie, to even: 1 + 2^-6 (truncation keeps 1 + 2^-7)
                          1.0f,                  // 1 + 2^-8 + 2^-15: above the tie: up
                          -1.0f, 3.0f, 0.0f};
  std::vector<float> y = {0.00390625f, 0.00390625f, 0.00390625f + 0.000030517578125f,
                          -0.00390625f, -0.01171875f, 0.0f};
  std::vector<uint16_t> want_fixed = {0x3f80, 0x3f82, 0x3f81, 0xbf80, 0x403f, 0x0000};
  ASSERT_EQ(x.size(), y.size());
  // Plus pseudo-random pairs of either sign with magnitudes from 2^-12 to 8: within 15 binades of each
  // other, so x + y (at most 24 significant bits) is exact in fp32.
  uint32_t state = 12345;
  auto next_bf16 = [&] {
    state = state * 1664525u + 1013904223u;
    const double significand = 1.0 + double((state >> 9) & 0x7f) / 128.0;
    const double mag = std::ldexp(significand, int((state >> 20) & 7) + int((state >> 24) & 7) - 12);
    return bf16_value(bits_of_bf16(static_cast<float>((state & 1) ? -mag : mag)));
  };
  while (x.size() < 1000) {
    x.push_back(next_bf16());
    y.push_back(next_bf16());
  }
  const size_t n = x.size();
  std::vector<uint16_t> data(n + 2);
  for (size_t i = 0; i < n; ++i) data[i] = rank() == 0 ? bits_of_bf16(x[i]) : rank() == 1 ? bits_of_bf16(y[i]) : 0;
  // Two more: every rank adds rank + 1 (an exact integer sum), and a NaN from rank 0 stays NaN.
  data[n] = bits_of_bf16(float(rank() + 1));
  data[n + 1] = rank() == 0 ? 0x7fc0 : bits_of_bf16(1.0f);
  c().all_reduce_sum(data.data(), data.size(), Type::bf16);

  for (size_t i = 0; i < want_fixed.size(); ++i)
    EXPECT_EQ(data[i], want_fixed[i]) << std::hex << "case " << i << ": " << x[i] << " + " << y[i];
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint16_t want = bf16_nearest(double(x[i]) + double(y[i]));
    if (data[i] != want && wrong++ < 5)
      ADD_FAILURE() << std::hex << "element " << i << ": " << x[i] << " + " << y[i] << " gave 0x" << data[i] << ", want 0x" << want;
  }
  EXPECT_EQ(wrong, 0u);
  EXPECT_EQ(bf16_value(data[n]), float(size() * (size() + 1) / 2));
  EXPECT_TRUE(std::isnan(bf16_value(data[n + 1])));
  expect_same_on_all_ranks(data.data(), data.size() * 2, "bf16 all_reduce");
}

TEST_F(MpiWorld, AllReduceIntegers) {
  std::vector<int32_t> ints(1001);
  for (size_t i = 0; i < ints.size(); ++i) ints[i] = int32_t(i) * (rank() + 1) - 1000 * rank();
  c().all_reduce_sum(ints.data(), ints.size(), Type::i32);
  const int n = size();
  for (size_t i = 0; i < ints.size(); ++i)
    if (ints[i] != int32_t(i) * n * (n + 1) / 2 - 1000 * n * (n - 1) / 2) {
      ADD_FAILURE() << "i32 element " << i << ": " << ints[i];
      break;
    }
  // u8 sums wrap modulo 256.
  std::vector<uint8_t> bytes(5, uint8_t(200 + rank()));
  c().all_reduce_sum(bytes.data(), bytes.size(), Type::u8);
  EXPECT_EQ(bytes[4], uint8_t((200 * n + n * (n - 1) / 2) % 256));
}

TEST_F(MpiWorld, AllGatherIsInRankOrder) {
  // 5 i32 and 3 u8 per rank: blocks that do not line up with anything.
  std::vector<int32_t> send(5);
  for (int i = 0; i < 5; ++i) send[i] = rank() * 100 + i;
  std::vector<int32_t> recv(5 * size_t(size()), -1);
  c().all_gather(send.data(), recv.data(), 5, Type::i32);
  for (int r = 0; r < size(); ++r)
    for (int i = 0; i < 5; ++i) EXPECT_EQ(recv[size_t(r) * 5 + i], r * 100 + i) << "block " << r << " on rank " << rank();

  // In place: this rank's block of recv is its send buffer.
  std::vector<uint8_t> all(3 * size_t(size()), 0xee);
  for (int i = 0; i < 3; ++i) all[size_t(rank()) * 3 + i] = uint8_t(rank() * 10 + i);
  c().all_gather(all.data() + size_t(rank()) * 3, all.data(), 3, Type::u8);
  for (int r = 0; r < size(); ++r)
    for (int i = 0; i < 3; ++i) EXPECT_EQ(all[size_t(r) * 3 + i], uint8_t(r * 10 + i)) << "in place, block " << r;
}

TEST_F(MpiWorld, BroadcastFromTheFirstAndTheLastRank) {
  for (int root : {0, size() - 1}) {
    std::vector<float> data(4097);
    for (size_t i = 0; i < data.size(); ++i) data[i] = rank() == root ? float(i) * 0.5f + float(root) : -1.0f;
    c().broadcast(data.data(), data.size(), Type::f32, root);
    for (size_t i = 0; i < data.size(); ++i)
      if (data[i] != float(i) * 0.5f + float(root)) {
        ADD_FAILURE() << "root " << root << ", element " << i << " on rank " << rank() << ": " << data[i];
        break;
      }
  }
  // A root outside the world is refused on every rank before anything is sent.
  float f = 0;
  const std::string msg = error_of([&] { c().broadcast(&f, 1, Type::f32, size()); });
  EXPECT_NE(msg.find("rank " + std::to_string(rank()) + " of " + std::to_string(size())), std::string::npos) << msg;
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto s = [](const timeval& t) { return double(t.tv_sec) + double(t.tv_usec) * 1e-6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

TEST_F(MpiWorld, BroadcastIdleWaitsWithoutBurningACore) {
  c().barrier();
  char command[64] = {};
  const double cpu0 = cpu_seconds();
  const auto t0 = Clock::now();
  if (rank() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::strcpy(command, "decode 42");
  }
  c().broadcast_idle(command, sizeof command, 0);
  const double waited = seconds_since(t0), cpu = cpu_seconds() - cpu0;
  EXPECT_STREQ(command, "decode 42") << "rank " << rank();
  if (rank() != 0) {
    EXPECT_GE(waited, 0.15) << "rank " << rank() << " did not wait for the root";
    EXPECT_LT(cpu, 0.1) << "rank " << rank() << " used " << cpu << " s of CPU time waiting " << waited << " s";
  }
}

TEST_F(MpiWorld, BarrierWaitsForTheLastRank) {
  c().barrier();
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(50 * rank()));
  c().barrier();
  EXPECT_GE(seconds_since(t0), 0.05 * (size() - 1) - 0.02) << "rank " << rank() << " left the barrier early";
}

TEST_F(MpiWorld, StatsCountCallsAndBytes) {
  c().reset_stats();
  std::vector<float> f(10, 1.0f);
  for (int i = 0; i < 3; ++i) c().all_reduce_sum(f.data(), f.size(), Type::f32);
  std::vector<int32_t> send(4, 0), recv(4 * size_t(size()));
  c().all_gather(send.data(), recv.data(), 4, Type::i32);
  c().barrier();
  EXPECT_EQ(c().stats().calls, 5u);
  EXPECT_EQ(c().stats().bytes, 3u * 40u + 16u);
  EXPECT_GT(c().stats().seconds, 0.0);
  c().reset_stats();
  EXPECT_EQ(c().stats().calls, 0u);
}

// A measurement, not a check: the latency of a decode-sized all-reduce (8 KiB of f32).
TEST_F(MpiWorld, AllReduceLatency8KiB) {
  std::vector<float> data(2048, 1.0f);
  for (int i = 0; i < 50; ++i) c().all_reduce_sum(data.data(), data.size(), Type::f32);
  c().barrier();
  constexpr int kCalls = 500;
  const auto t0 = Clock::now();
  for (int i = 0; i < kCalls; ++i) c().all_reduce_sum(data.data(), data.size(), Type::f32);
  const double us = seconds_since(t0) / kCalls * 1e6;
  if (rank() == 0) std::fprintf(stderr, "# comm: 8 KiB f32 all_reduce over %d ranks: %.1f us\n", size(), us);
  RecordProperty("all_reduce_8KiB_us", std::to_string(us));
}

// Rank 0 gives up on an all-reduce rank 1 joins late; the next collective finishes it, so the ranks
// stay in step and rank 0's buffer gets the sum after all.
TEST_F(MpiWorld, TimeoutNamesTheRankAndTheRanksCatchUp) {
  if (size() < 2) GTEST_SKIP() << "needs 2 ranks";
  c().barrier();
  const double normal = c().timeout_seconds();
  std::vector<float> data(100, float(rank() + 1));
  if (rank() == 0) {
    c().set_timeout_seconds(0.3);
    const auto t0 = Clock::now();
    const std::string msg = error_of([&] { c().all_reduce_sum(data.data(), data.size(), Type::f32); });
    const double waited = seconds_since(t0);
    EXPECT_NE(msg.find("rank 0 of " + std::to_string(size())), std::string::npos) << msg;
    EXPECT_NE(msg.find("all_reduce of 400 bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find("MOERUN_COMM_TIMEOUT"), std::string::npos) << msg;
    EXPECT_GE(waited, 0.3);
    EXPECT_LT(waited, 0.8) << "the timeout fired late";
    c().set_timeout_seconds(normal);
  } else {
    if (rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    c().all_reduce_sum(data.data(), data.size(), Type::f32);
  }
  c().barrier();  // on rank 0 this first finishes the late all-reduce
  const float want = float(size() * (size() + 1) / 2);
  EXPECT_EQ(data[0], want) << "rank " << rank();
  EXPECT_EQ(data[99], want) << "rank " << rank();
  std::vector<int32_t> one(1, 1);
  c().all_reduce_sum(one.data(), 1, Type::i32);
  EXPECT_EQ(one[0], size()) << "the ranks are out of step after the timeout";
}

// ----- NCCL (CUDA builds with NCCL, on a machine with a GPU per rank of this machine) ---------------

#ifdef MOERUN_HAVE_NCCL
// One rank per GPU: in the plain run over the single Comm (a 1-rank NCCL world), under mpirun over
// MPI when the machine has a GPU for each of its ranks (NCCL refuses two ranks on one device).
TEST(NcclComm, CollectivesOnTheDevice) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device";
  std::shared_ptr<Comm> boot = launched_by_mpi() ? mpi_world() : make_single();
  if (boot->local_size() > devices) GTEST_SKIP() << boot->local_size() << " ranks on this machine, " << devices << " GPUs";
  const int device = boot->local_rank();
  ASSERT_EQ(cudaSetDevice(device), cudaSuccess);
  auto nccl = make_nccl(*boot, device);
  EXPECT_STREQ(nccl->name(), "nccl");
  EXPECT_TRUE(nccl->device_buffers());
  EXPECT_EQ(nccl->rank(), boot->rank());
  EXPECT_EQ(nccl->size(), boot->size());
  const int r = nccl->rank(), n = nccl->size();
  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto upload = [&](const void* host, size_t bytes) {
    void* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, bytes), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    return d;
  };
  auto download = [&](void* host, const void* d, size_t bytes) {
    EXPECT_EQ(cudaMemcpy(host, d, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  };

  std::vector<float> f(1000);
  for (size_t i = 0; i < f.size(); ++i) f[i] = float(i) * 0.25f * float(r + 1);
  void* df = upload(f.data(), f.size() * 4);
  nccl->all_reduce_sum(df, f.size(), Type::f32, stream);
  std::vector<uint16_t> h(7, bits_of_bf16(float(r + 1)));
  void* dh = upload(h.data(), h.size() * 2);
  nccl->all_reduce_sum(dh, h.size(), Type::bf16, stream);
  std::vector<int32_t> send = {r * 10, r * 10 + 1, r * 10 + 2}, gathered(3 * size_t(n));
  void* ds = upload(send.data(), 12);
  void* dg = upload(gathered.data(), gathered.size() * 4);
  nccl->all_gather(ds, dg, 3, Type::i32, stream);
  std::vector<uint8_t> b(5, uint8_t(r));
  void* db = upload(b.data(), b.size());
  nccl->broadcast(db, b.size(), Type::u8, n - 1, stream);
  nccl->synchronize(stream);

  download(f.data(), df, f.size() * 4);
  for (size_t i = 0; i < f.size(); ++i)
    if (f[i] != float(i) * 0.25f * float(n * (n + 1) / 2)) {
      ADD_FAILURE() << "f32 element " << i << ": " << f[i] << " on rank " << r;
      break;
    }
  download(h.data(), dh, h.size() * 2);
  EXPECT_EQ(bf16_value(h[6]), float(n * (n + 1) / 2));
  download(gathered.data(), dg, gathered.size() * 4);
  for (int q = 0; q < n; ++q) EXPECT_EQ(gathered[size_t(q) * 3 + 2], q * 10 + 2) << "block " << q;
  download(b.data(), db, b.size());
  EXPECT_EQ(b[4], uint8_t(n - 1));
  EXPECT_EQ(nccl->stats().calls, 4u);
  EXPECT_EQ(nccl->stats().bytes, 4000u + 14u + 12u + 5u);
  for (void* d : {df, dh, ds, dg, db}) cudaFree(d);
  cudaStreamDestroy(stream);
}
#endif

// Failures of ranks > 0, one line each (their full gtest output would interleave with rank 0's).
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                   r.message());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace moerun::comm

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  using namespace moerun::comm;
  if (launched_by_mpi()) {
    // MPI starts before any test touches the launcher's variables, and a hang in a broken test
    // becomes a failure in seconds instead of the default minute.
    mpi_world()->set_timeout_seconds(20);
    if (launch_rank() > 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new FailurePrinter(launch_rank()));
    }
  }
  return RUN_ALL_TESTS();
}
