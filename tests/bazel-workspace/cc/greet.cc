#include "cc/greet.h"

#include <cstdint>

std::string Greet(const std::string& name) {
  uint32_t sum = 0;
  for (unsigned char c : name) sum = sum * 31u + c;
  return "hello, " + name + " (checksum " + std::to_string(sum) + ")";
}
