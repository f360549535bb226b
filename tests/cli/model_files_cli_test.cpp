// CLI tests: model_files (issue 13).

#include <gtest/gtest.h>
