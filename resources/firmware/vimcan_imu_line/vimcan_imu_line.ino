// VIMCAN line protocol: an ESP32 / Arduino board streaming one IMU's orientation.
//
// Hardware: a BNO08x (BNO080/BNO085/BNO086, Adafruit library "Adafruit BNO08x") or a
// BNO055 (library "Adafruit BNO055") on I2C. Pick the sensor with the #define below.
// Output, one line per sample at SAMPLE_RATE_HZ on the USB serial port (115200 baud):
//
//   Q,<sensor>,<seq>,<time_us>,<qw>,<qx>,<qy>,<qz>,<ax>,<ay>,<az>*<hh>
//
// See README.md next to this folder for the full protocol. Test it with
//   vimcan devices --probe            (finds the board and its baud rate)
//   vimcan monitor line:/dev/ttyACM0@115200 --seconds 10 --csv test.csv

#include <Arduino.h>
#include <Wire.h>

#define USE_BNO08X 1        // 1: BNO08x, 0: BNO055
#define SENSOR_ID 0         // the <sensor> field; give each IMU on a board its own id
#define SAMPLE_RATE_HZ 100  // 100 Hz is plenty for motion capture at 30 fps
#define SERIAL_BAUD 115200

#if USE_BNO08X
#include <Adafruit_BNO08x.h>
Adafruit_BNO08x imu(-1);  // no reset pin
sh2_SensorValue_t event;
#else
#include <Adafruit_BNO055.h>
Adafruit_BNO055 imu(55, 0x28, &Wire);
#endif

static uint16_t seq = 0;  // wraps at 65536, as the protocol says
static float quat[4] = {1, 0, 0, 0};
static float lin_acc[3] = {0, 0, 0};
static bool have_quat = false;

// NMEA-style checksum: XOR of every character of the body.
static uint8_t xor_checksum(const char *s) {
  uint8_t x = 0;
  while (*s) x ^= (uint8_t)*s++;
  return x;
}

static void send_sample(uint32_t time_us) {
  char body[160];
  // dtostrf keeps this portable to AVR boards, whose printf has no %f
  char q[4][12], a[3][10];
  for (int i = 0; i < 4; i++) dtostrf(quat[i], 1, 5, q[i]);
  for (int i = 0; i < 3; i++) dtostrf(lin_acc[i], 1, 3, a[i]);
  snprintf(body, sizeof body, "Q,%d,%u,%lu,%s,%s,%s,%s,%s,%s,%s", SENSOR_ID, (unsigned)seq,
           (unsigned long)time_us, q[0], q[1], q[2], q[3], a[0], a[1], a[2]);
  char line[170];
  snprintf(line, sizeof line, "%s*%02X\n", body, xor_checksum(body));
  Serial.print(line);
  seq++;
}

static void fail(const char *what) {
  while (true) {
    Serial.print("# ");
    Serial.println(what);  // comment lines are ignored by the host
    delay(1000);
  }
}

#if USE_BNO08X
static void enable_reports() {
  const uint32_t interval_us = 1000000UL / SAMPLE_RATE_HZ;
  if (!imu.enableReport(SH2_ROTATION_VECTOR, interval_us)) fail("could not enable the rotation vector");
  if (!imu.enableReport(SH2_LINEAR_ACCELERATION, interval_us)) fail("could not enable linear acceleration");
}
#endif

void setup() {
  Serial.begin(SERIAL_BAUD);
  while (!Serial && millis() < 2000) {
  }
  Serial.println("# VIMCAN line protocol example");
#if USE_BNO08X
  if (!imu.begin_I2C()) fail("BNO08x not found on I2C (check wiring and address 0x4A/0x4B)");
  enable_reports();
  Serial.println("I,board,BNO08x rotation vector");
#else
  if (!imu.begin()) fail("BNO055 not found on I2C (check wiring and address 0x28/0x29)");
  imu.setExtCrystalUse(true);
  Serial.println("I,board,BNO055 NDOF");
#endif
  Serial.print("I,rate_hz,");
  Serial.println(SAMPLE_RATE_HZ);
}

void loop() {
#if USE_BNO08X
  if (imu.wasReset()) enable_reports();
  // the orientation report drives the output; linear acceleration updates in between
  while (imu.getSensorEvent(&event)) {
    if (event.sensorId == SH2_LINEAR_ACCELERATION) {
      lin_acc[0] = event.un.linearAcceleration.x;
      lin_acc[1] = event.un.linearAcceleration.y;
      lin_acc[2] = event.un.linearAcceleration.z;
    } else if (event.sensorId == SH2_ROTATION_VECTOR) {
      quat[0] = event.un.rotationVector.real;
      quat[1] = event.un.rotationVector.i;
      quat[2] = event.un.rotationVector.j;
      quat[3] = event.un.rotationVector.k;
      send_sample(micros());
    }
  }
#else
  static uint32_t next_us = micros();
  const uint32_t period_us = 1000000UL / SAMPLE_RATE_HZ;
  if ((int32_t)(micros() - next_us) >= 0) {
    next_us += period_us;
    uint32_t t = micros();
    imu::Quaternion q = imu.getQuat();
    imu::Vector<3> la = imu.getVector(Adafruit_BNO055::VECTOR_LINEARACCEL);
    quat[0] = q.w(); quat[1] = q.x(); quat[2] = q.y(); quat[3] = q.z();
    lin_acc[0] = la.x(); lin_acc[1] = la.y(); lin_acc[2] = la.z();
    send_sample(t);
  }
#endif
}
