"""The simulated robot's physical world: a rectangular room, a dock, a cliff, and a Create 2 in it.

Pure and deterministic: :meth:`World.step` advances world time by a fixed step and every random choice comes
from the seeded ``random.Random`` handed in, so a seed reproduces a run exactly. It knows nothing about the
Open Interface; ``hal.sim.robot`` reads these fields to answer sensor requests and writes the wheel commands.

Units: millimetres, mm/s, radians (CCW positive, 0 = +x), seconds of *world* time. The room's origin is its
lower-left corner; the dock sits in the middle of the bottom wall and faces +y.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field

from hal.codec import Buttons, ChargingState
from hal.models import MODELS

# Geometry and limits are the HAL's Create 2 model, so the simulator and the client's odometry cannot drift.
_CREATE2 = MODELS["create2"]
WHEEL_BASE_MM = _CREATE2.wheelbase_mm
WHEEL_DIAMETER_MM = _CREATE2.wheel_diameter_mm
COUNTS_PER_REV = _CREATE2.counts_per_rev
COUNTS_PER_MM = 1.0 / _CREATE2.mm_per_count
ROBOT_RADIUS_MM = 170.0
MAX_WHEEL_MM_S = float(_CREATE2.max_velocity_mm_s)
BATTERY_CAPACITY_MAH = 2696.0

# Dock IR characters (Roomba 600 dock, SPEC p.26): a bit each for force field (1), green (4), red (8).
IR_DOCK_BASE = 160
IR_FORCE_FIELD = 1
IR_GREEN_BUOY = 4
IR_RED_BUOY = 8

# Light bumper sensors, bit order of packet 45 (L, FL, CL, CR, FR, R), as angles off the heading.
LIGHT_BUMP_ANGLES = tuple(math.radians(a) for a in (72.0, 40.0, 12.0, -12.0, -40.0, -72.0))
# Cliff sensors (packets 9-12: L, FL, FR, R) as (angle off heading, distance from centre).
CLIFF_SENSORS = tuple((math.radians(a), 150.0) for a in (70.0, 20.0, -20.0, -70.0))

# Packet 18 / opcode 165 bit per button, from the codec's flag type ("clean": 0x01 … "clock": 0x80).
BUTTON_BITS: dict[str, int] = {str(b.name).lower(): int(b) for b in Buttons}
BUTTON_HOLD_S = 1.0 / 6.0


class Mission(enum.Enum):
    """What the robot's own firmware is doing (it drives itself; the OI is in Passive)."""

    NONE = "none"
    CLEAN = "clean"
    SPOT = "spot"
    MAX = "max"
    SEEK_DOCK = "seek_dock"


@dataclass(frozen=True, slots=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1


@dataclass(frozen=True, slots=True)
class Room:
    """A walled rectangle with a dock on the bottom wall and a drop-off (stairs) region."""

    width: float = 4000.0
    height: float = 3000.0
    dock_x: float = 2000.0
    cliffs: tuple[Rect, ...] = (Rect(3300.0, 2300.0, 4000.0, 3000.0),)

    @property
    def dock_pose(self) -> tuple[float, float, float]:
        """Where the robot's centre sits when docked: just off the wall, facing the dock."""
        return (self.dock_x, ROBOT_RADIUS_MM + 5.0, -math.pi / 2)

    @property
    def undock_pose(self) -> tuple[float, float, float]:
        return (self.dock_x, 700.0, math.pi / 2)

    def ray_distance(self, x: float, y: float, angle: float) -> float:
        """Distance from (x, y) to the first wall along ``angle``."""
        dx, dy = math.cos(angle), math.sin(angle)
        best = math.inf
        if dx > 1e-9:
            best = min(best, (self.width - x) / dx)
        elif dx < -1e-9:
            best = min(best, -x / dx)
        if dy > 1e-9:
            best = min(best, (self.height - y) / dy)
        elif dy < -1e-9:
            best = min(best, -y / dy)
        return max(0.0, best)

    def is_cliff(self, x: float, y: float) -> bool:
        return any(c.contains(x, y) for c in self.cliffs)


def _wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


@dataclass(slots=True)
class World:
    """Mutable physical state, advanced by :meth:`step`. Tests read the fields directly."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    room: Room = field(default_factory=Room)
    x: float = 2000.0
    y: float = 700.0
    theta: float = math.pi / 2
    time: float = 0.0
    # Wheel velocity commands from the OI (Drive / Drive Direct / Drive PWM), mm/s.
    cmd_left: float = 0.0
    cmd_right: float = 0.0
    # Cleaning motors, duty 0..1 (sign = direction for the brushes).
    main_brush: float = 0.0
    side_brush: float = 0.0
    vacuum: float = 0.0
    # Cumulative, unwrapped encoder counts (float so that no fraction is lost between steps).
    enc_left: float = 0.0
    enc_right: float = 0.0
    # Distance / angle since last request (packets 19/20), from wheel travel like the firmware.
    odo_distance_mm: float = 0.0
    odo_angle_deg: float = 0.0
    # Total distance the body actually moved (mm), for tests and state.
    travelled_mm: float = 0.0
    battery_mah: float = BATTERY_CAPACITY_MAH * 0.8
    battery_capacity_mah: float = BATTERY_CAPACITY_MAH
    battery_temp_c: float = 24.0
    battery_fault: bool = False
    current_ma: float = -190.0
    charging_state: ChargingState = ChargingState.NOT_CHARGING
    charge_allowed: bool = True
    charge_started_at: float = 0.0
    docked: bool = False
    # Fault injections and momentary inputs.
    forced_cliff: bool = False
    forced_wheel_drop: bool = False
    stuck: bool = False
    bump_until: float = -1.0
    bump_bits_forced: int = 0
    buttons_until: dict[str, float] = field(default_factory=dict)
    # Derived sensor state, refreshed every step.
    bump_left: bool = False
    bump_right: bool = False
    cliff: tuple[bool, bool, bool, bool] = (False, False, False, False)
    cliff_signal: tuple[int, int, int, int] = (2800, 2800, 2800, 2800)
    light_signal: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    light_bits: int = 0
    wall_signal: int = 0
    ir_omni: int = 0
    ir_left: int = 0
    ir_right: int = 0
    stasis: int = 0
    overcurrents: int = 0
    stall_time: float = 0.0
    wheel_current: tuple[int, int] = (0, 0)
    dirt: int = 0
    # The robot's own behaviour (cleaning, docking).
    mission: Mission = Mission.NONE
    mission_started: float = 0.0
    _behaviour_state: str = "forward"
    _behaviour_until: float = 0.0
    _turn_dir: float = 1.0
    _sensed_at: tuple[float, float, float, bool, bool] | None = None

    # ------------------------------------------------------------------ inputs

    def set_wheels(self, left: float, right: float) -> None:
        self.cmd_left = max(-MAX_WHEEL_MM_S, min(MAX_WHEEL_MM_S, float(left)))
        self.cmd_right = max(-MAX_WHEEL_MM_S, min(MAX_WHEEL_MM_S, float(right)))

    def stop_motors(self) -> None:
        self.cmd_left = self.cmd_right = 0.0
        self.main_brush = self.side_brush = self.vacuum = 0.0

    def place(self, x: float, y: float, theta: float) -> None:
        self.x, self.y, self.theta = x, y, _wrap_angle(theta)
        self._refresh_sensors()

    def dock_now(self) -> None:
        """Put the robot on the dock (as a person would)."""
        self.place(*self.room.dock_pose)

    def undock_now(self) -> None:
        self.place(*self.room.undock_pose)

    def press_button(self, name: str) -> None:
        if name not in BUTTON_BITS:
            raise ValueError(f"unknown button {name!r}; one of {', '.join(BUTTON_BITS)}")
        self.buttons_until[name] = self.time + BUTTON_HOLD_S

    def press_buttons_bits(self, bits: int) -> None:
        for name, bit in BUTTON_BITS.items():
            if bits & bit:
                self.buttons_until[name] = self.time + BUTTON_HOLD_S

    def bump(self, side: str = "both", seconds: float = 0.2) -> None:
        bits = {"right": 1, "left": 2, "both": 3}.get(side)
        if bits is None:
            raise ValueError(f"bump side must be left, right or both, not {side!r}")
        self.bump_bits_forced = bits
        self.bump_until = self.time + seconds

    def set_battery_percent(self, percent: float) -> None:
        self.battery_mah = max(0.0, min(100.0, float(percent))) / 100.0 * self.battery_capacity_mah

    def start_mission(self, mission: Mission) -> None:
        """Start (or, as the real buttons do, pause when the same one is running) a firmware behaviour."""
        if mission is not Mission.NONE and mission is self.mission:
            self.end_mission()
            return
        self.mission = mission
        self.mission_started = self.time
        self._behaviour_state = "undock" if self.docked and mission is not Mission.SEEK_DOCK else "forward"
        self._behaviour_until = self.time + 1.5
        if mission is Mission.SEEK_DOCK and self.docked:
            self.mission = Mission.NONE

    def end_mission(self) -> None:
        self.mission = Mission.NONE
        self.stop_motors()

    # ------------------------------------------------------------------ queries

    @property
    def battery_percent(self) -> float:
        return 100.0 * self.battery_mah / self.battery_capacity_mah if self.battery_capacity_mah else 0.0

    @property
    def voltage_mv(self) -> int:
        frac = self.battery_mah / self.battery_capacity_mah if self.battery_capacity_mah else 0.0
        mv = 13800.0 + 2900.0 * frac + 0.6 * self.current_ma
        return int(max(0.0, mv))

    @property
    def wheel_drop(self) -> bool:
        return self.forced_wheel_drop

    @property
    def bumps_wheel_drops(self) -> int:
        bits = (1 if self.bump_right else 0) | (2 if self.bump_left else 0)
        if self.time < self.bump_until:
            bits |= self.bump_bits_forced
        if self.forced_wheel_drop:
            bits |= 0x0C
        return bits

    @property
    def buttons(self) -> int:
        bits = 0
        for name, until in self.buttons_until.items():
            if self.time < until:
                bits |= BUTTON_BITS[name]
        return bits

    @property
    def charging_sources(self) -> int:
        return 0x02 if self.docked else 0

    @property
    def encoder_left(self) -> int:
        return math.floor(self.enc_left)

    @property
    def encoder_right(self) -> int:
        return math.floor(self.enc_right)

    def take_distance(self) -> int:
        """Packet 19: mm since the last request; the reported whole part is consumed, the fraction kept."""
        value = int(self.odo_distance_mm)
        self.odo_distance_mm -= value
        return max(-32768, min(32767, value))

    def take_angle(self) -> int:
        value = int(self.odo_angle_deg)
        self.odo_angle_deg -= value
        return max(-32768, min(32767, value))

    # ------------------------------------------------------------------ physics

    def step(self, dt: float) -> None:
        """Advance the world by ``dt`` seconds of world time."""
        self.time += dt
        if self.mission is not Mission.NONE:
            self._run_mission()
        left, right = self.cmd_left, self.cmd_right
        if self.battery_mah <= 0.0:
            left = right = 0.0
        dl, dr = left * dt, right * dt
        self.enc_left += abs(dl) * COUNTS_PER_MM * (1 if left >= 0 else -1)
        self.enc_right += abs(dr) * COUNTS_PER_MM * (1 if right >= 0 else -1)
        self.odo_distance_mm += (dl + dr) / 2.0
        self.odo_angle_deg += math.degrees((dr - dl) / WHEEL_BASE_MM)
        self.bump_left = self.bump_right = False
        moved_forward = 0.0
        if (dl or dr) and not self.stuck and not self.forced_wheel_drop:
            moved_forward = self._move(dl, dr)
        commanded = bool(left or right)
        self.stall_time = self.stall_time + dt if commanded and self.stuck else 0.0
        self.overcurrents = 0x18 if self.stall_time > 0.5 else 0
        self.stasis = 1 if moved_forward > 0.0 and left > 0 and right > 0 else 0
        stall = 600 if self.stuck and commanded else 0
        self.wheel_current = (int(abs(left) * 0.4) + stall, int(abs(right) * 0.4) + stall)
        self._refresh_sensors()
        self._battery(dt, left, right)

    def _move(self, dl: float, dr: float) -> float:
        dtheta = (dr - dl) / WHEEL_BASE_MM
        ds = (dl + dr) / 2.0
        heading = self.theta + dtheta / 2.0
        nx = self.x + ds * math.cos(heading)
        ny = self.y + ds * math.sin(heading)
        r, room = ROBOT_RADIUS_MM, self.room
        contacts: list[float] = []
        if nx < r:
            nx = r
            contacts.append(math.pi)
        elif nx > room.width - r:
            nx = room.width - r
            contacts.append(0.0)
        if ny < r:
            ny = r
            contacts.append(-math.pi / 2)
        elif ny > room.height - r:
            ny = room.height - r
            contacts.append(math.pi / 2)
        before = (self.x, self.y)
        self.x, self.y = nx, ny
        self.theta = _wrap_angle(self.theta + dtheta)
        for normal in contacts:
            rel = _wrap_angle(normal - self.theta)
            if abs(rel) <= math.radians(100):
                if rel > math.radians(-10):
                    self.bump_left = True
                if rel < math.radians(10):
                    self.bump_right = True
        travelled = math.hypot(nx - before[0], ny - before[1])
        self.travelled_mm += travelled
        return travelled if ds > 0 else -travelled

    def _refresh_sensors(self) -> None:
        key = (self.x, self.y, self.theta, self.forced_cliff, self.forced_wheel_drop)
        if key == self._sensed_at:
            return
        self._sensed_at = key
        room, x, y, th = self.room, self.x, self.y, self.theta
        signals = []
        bits = 0
        for i, rel in enumerate(LIGHT_BUMP_ANGLES):
            d = room.ray_distance(x, y, th + rel) - ROBOT_RADIUS_MM
            signals.append(int(4095.0 / (1.0 + (max(d, 0.0) / 45.0) ** 2)))
            if d < 100.0:
                bits |= 1 << i
        self.light_signal = tuple(signals)
        self.light_bits = bits
        d_right = room.ray_distance(x, y, th - math.pi / 2) - ROBOT_RADIUS_MM
        self.wall_signal = int(1023.0 / (1.0 + (max(d_right, 0.0) / 35.0) ** 2))
        cliffs = []
        cliff_signals = []
        for rel, dist in CLIFF_SENSORS:
            cx = x + dist * math.cos(th + rel)
            cy = y + dist * math.sin(th + rel)
            over = self.forced_cliff or room.is_cliff(cx, cy) or self.forced_wheel_drop
            cliffs.append(over)
            cliff_signals.append(8 if over else 2750 + ((int(cx) * 7 + int(cy) * 13) % 97))
        self.cliff = (cliffs[0], cliffs[1], cliffs[2], cliffs[3])
        self.cliff_signal = (cliff_signals[0], cliff_signals[1], cliff_signals[2], cliff_signals[3])
        dock_x, dock_y, dock_th = room.dock_pose
        self.docked = (
            math.hypot(x - dock_x, y - dock_y) < 40.0
            and abs(_wrap_angle(th - dock_th)) < math.radians(35)
            and not self.forced_wheel_drop
        )
        self._ir(x, y, th)

    def _ir(self, x: float, y: float, th: float) -> None:
        dx, dy = x - self.room.dock_x, y
        dist = math.hypot(dx, dy)
        code = 0
        if dy > 0 and dist < 2500.0:
            if dist < 600.0:
                code |= IR_FORCE_FIELD
            if dx <= 150.0:
                code |= IR_RED_BUOY
            if dx >= -150.0:
                code |= IR_GREEN_BUOY
        self.ir_omni = IR_DOCK_BASE | code if code else 0
        if not code:
            self.ir_left = self.ir_right = 0
            return
        bearing = _wrap_angle(math.atan2(-dy, -dx) - th)
        left_sees = math.radians(-10) <= bearing <= math.radians(100)
        right_sees = math.radians(-100) <= bearing <= math.radians(10)
        self.ir_left = self.ir_omni if left_sees else 0
        self.ir_right = self.ir_omni if right_sees else 0

    def _battery(self, dt: float, left: float, right: float) -> None:
        draw = 190.0 + 0.35 * (abs(left) + abs(right))
        draw += 250.0 * abs(self.main_brush) + 100.0 * abs(self.side_brush) + 300.0 * self.vacuum
        charge = 0.0
        full = self.battery_mah >= self.battery_capacity_mah * 0.999
        if self.battery_fault and self.docked:
            state = ChargingState.FAULT
        elif not (self.docked and self.charge_allowed):
            state = ChargingState.NOT_CHARGING
        elif full:
            state = ChargingState.WAITING
        elif self.battery_mah >= self.battery_capacity_mah * 0.95:
            state, charge = ChargingState.TRICKLE, 150.0
        else:
            state, charge = ChargingState.FULL_CHARGING, 1500.0
        if state is not ChargingState.NOT_CHARGING and self.charging_state is ChargingState.NOT_CHARGING:
            self.charge_started_at = self.time
        self.charging_state = state
        if state is ChargingState.WAITING or (self.docked and not self.charge_allowed):
            self.current_ma = 0.0
        else:
            self.current_ma = charge - draw
        self.battery_mah = max(
            0.0, min(self.battery_capacity_mah, self.battery_mah + self.current_ma * dt / 3600.0)
        )
        target = 32.0 if charge > 1000 else (27.0 if (left or right) else 23.0)
        self.battery_temp_c += (target - self.battery_temp_c) * min(1.0, dt / 600.0)

    # ------------------------------------------------------------------ firmware behaviours

    def _run_mission(self) -> None:
        """Simple behaviours: bounce around the room, spiral, or drive home and dock."""
        m = self.mission
        if m is Mission.SEEK_DOCK:
            self.main_brush = self.side_brush = self.vacuum = 0.0
            self._seek_dock()
            return
        elapsed = self.time - self.mission_started
        if (m is Mission.SPOT and elapsed > 60.0) or (m is Mission.CLEAN and elapsed > 1200.0):
            self._go_home()
            return
        if self.battery_percent < (10.0 if m is Mission.MAX else 15.0):
            self._go_home()
            return
        self.main_brush, self.side_brush, self.vacuum = 1.0, 1.0, 1.0
        self.dirt = self.rng.choice((0, 0, 0, 0, 0, 0, 0, 12, 40)) if self.rng.random() < 0.05 else 0
        state = self._behaviour_state
        if state == "undock":
            if self.time < self._behaviour_until:
                self.set_wheels(-150, -150)
                return
            self._begin_turn(math.pi)
            return
        if state == "turn":
            if self.time < self._behaviour_until:
                self.set_wheels(-150 * self._turn_dir, 150 * self._turn_dir)
                return
            self._behaviour_state = "forward"
        if state == "backoff":
            if self.time < self._behaviour_until:
                self.set_wheels(-150, -150)
                return
            self._begin_turn(self.rng.uniform(math.pi / 3, math.pi))
            return
        obstacle = self.bump_left or self.bump_right or any(self.cliff) or self.light_bits & 0x0C
        if obstacle:
            self._behaviour_state = "backoff"
            self._behaviour_until = self.time + 0.4
            self.set_wheels(-150, -150)
            return
        if m is Mission.SPOT:
            radius = 100.0 + 8.0 * elapsed
            v = 200.0
            self.set_wheels(
                v * (radius - WHEEL_BASE_MM / 2) / radius, v * (radius + WHEEL_BASE_MM / 2) / radius
            )
            return
        self.set_wheels(300, 300)

    def _begin_turn(self, angle: float) -> None:
        self._turn_dir = 1.0 if self.rng.random() < 0.5 else -1.0
        omega = 2 * 150.0 / WHEEL_BASE_MM
        self._behaviour_state = "turn"
        self._behaviour_until = self.time + abs(angle) / omega

    def _go_home(self) -> None:
        self.mission = Mission.SEEK_DOCK
        self.mission_started = self.time
        self._behaviour_state = "approach"

    def _seek_dock(self) -> None:
        if self.docked:
            self.mission = Mission.NONE
            self.stop_motors()
            return
        dock_x, dock_y, _ = self.room.dock_pose
        if self._behaviour_state == "undock":
            self._behaviour_state = "approach"
        if self._behaviour_state == "approach":
            target = (dock_x, dock_y + 350.0)
            if math.hypot(self.x - target[0], self.y - target[1]) < 25.0:
                self._behaviour_state = "final"
            else:
                self._steer_to(*target, speed=250.0)
                return
        self._steer_to(dock_x, dock_y, speed=120.0)

    def _steer_to(self, tx: float, ty: float, speed: float) -> None:
        bearing = _wrap_angle(math.atan2(ty - self.y, tx - self.x) - self.theta)
        if abs(bearing) > math.radians(12):
            turn = 120.0 if bearing > 0 else -120.0
            self.set_wheels(-turn, turn)
            return
        dist = math.hypot(tx - self.x, ty - self.y)
        v = min(speed, max(40.0, dist * 2.0))
        correction = bearing * 150.0
        self.set_wheels(v - correction, v + correction)
