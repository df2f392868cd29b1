# Writes the manual page: `${WINCH} --man` into ${OUT} (run by the build, proxy/CMakeLists.txt).
execute_process(COMMAND "${WINCH}" --man OUTPUT_FILE "${OUT}.tmp" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(REMOVE "${OUT}.tmp")
  message(FATAL_ERROR "${WINCH} --man failed: ${rc}")
endif()
file(RENAME "${OUT}.tmp" "${OUT}")
