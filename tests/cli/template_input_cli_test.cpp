// CLI tests: template_input (issue 13).

#include <gtest/gtest.h>
