#ifndef MEMOBUILD_TEST_GREET_H_
#define MEMOBUILD_TEST_GREET_H_

#include <string>

// Returns a greeting for `name` followed by a simple checksum of the name.
std::string Greet(const std::string& name);

#endif  // MEMOBUILD_TEST_GREET_H_
